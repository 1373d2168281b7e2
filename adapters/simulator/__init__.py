"""The simulator adapter: a heterogeneous LLM-serving cluster under runtime dynamics.

The embedded default of the project and the twin on which candidates are scored:
``autopoiesis evolve --adapter simulator --scenario NAME``.
"""

from __future__ import annotations

from autopoiesis.adapters.base import Adapter, AdapterError
from autopoiesis.metrics import Objective, RollingWindow, Snapshot

from . import hardware, scenario as scenarios
from .costmodel import calibration
from .engine import Simulation
from .slots import SLOTS

__all__ = ["SimulatorAdapter", "simulate"]


def simulate(policy, scenario_name: str, seed: int = 0, requests_limit: int | None = None, observer=None):
    """Run one compiled policy on a scenario; returns (metrics, engine Result)."""
    sc = scenarios.load(scenario_name, seed, requests_limit)
    try:
        gpus = hardware.load_gpus(sc.gpu_tables)
        model = hardware.model(sc.model, sc.model_tables)
        unknown = sorted({g for _, g in sc.initial_gpus} - set(gpus))
        unknown += sorted({g for _, kind, ids in sc.cluster_events if kind == "join" for _, g in ids} - set(gpus))
        if unknown:
            raise hardware.UnknownHardware(f"unknown GPU type(s) {', '.join(unknown)} (add them with gpu_tables)")
    except hardware.UnknownHardware as e:
        raise scenarios.ScenarioError(f"scenario {scenario_name}: {e}") from None
    sim = Simulation(sc, policy, gpus, model, lambda g: calibration(sc.calibration, g))
    sim.observer = observer
    result = sim.run()
    window = RollingWindow()
    for record in result.records:
        window.add(record)
    metrics = window.summary(sc.slo)
    first = min(r[0] for r in sc.requests)
    metrics.update(
        total_time=result.end - first,
        gpu_hours=result.gpu_seconds / 3600.0,
        cost_usd=result.cost_usd,
        overhead_scheduling_s=result.overheads.scheduling_s,
        overhead_reconfiguration_gpu_s=result.overheads.reconfiguration_s,
        reconfigurations=float(result.overheads.reconfigurations),
        recomputed_tokens=float(result.overheads.recomputed_tokens),
    )
    return metrics, result


class SimulatorAdapter(Adapter):
    """Discrete-event simulator of a heterogeneous LLM-serving cluster (the embedded default)."""

    name = "simulator"
    objectives = (Objective("total_time", "min"), Objective("mean_e2e", "min"), Objective("p99_ttft", "min"),
                  Objective("slo_attainment", "max"), Objective("cost_usd", "min"))
    headline = ("total_time", "mean_e2e", "p99_ttft", "slo_attainment", "cost_usd", "overhead_reconfiguration_gpu_s")

    def __init__(self, scenario: str = "mixed", requests: int | None = None):
        try:
            scenarios.path_of(str(scenario))
        except scenarios.ScenarioError as e:
            raise AdapterError(str(e)) from None
        self.scenario = str(scenario)
        self.requests = int(requests) if requests else None

    def slots(self):
        return list(SLOTS)

    def snapshot(self, seed: int) -> Snapshot:
        digest = scenarios.digest(self.scenario)
        return Snapshot(self.name, {"scenario": self.scenario, "digest": digest, "seed": seed,
                                    "requests": self.requests}, label=f"{self.scenario} seed {seed}")

    def summarize(self, snapshot) -> str:
        sc = scenarios.load(snapshot.params["scenario"], snapshot.params["seed"], snapshot.params["requests"])
        prompts = sorted(p for _, p, _ in sc.requests) or [0]
        gpus = {}
        for _, g in sc.initial_gpus:
            gpus[g] = gpus.get(g, 0) + 1
        events = "; ".join(f"t={t:.0f}s {kind} {len(ids)} GPU(s)" for t, kind, ids in sc.cluster_events) or "none"
        span = max((r[0] for r in sc.requests), default=1.0) or 1.0
        return (f"{sc.description}\nModel {sc.model}; GPUs at start: "
                f"{', '.join(f'{n}x {g}' for g, n in sorted(gpus.items()))}; cluster events: {events}.\n"
                f"{len(sc.requests)} requests over {span:.0f} s ({len(sc.requests) / span:.1f}/s on average); "
                f"prompt tokens median {prompts[len(prompts) // 2]}, p90 {prompts[int(0.9 * (len(prompts) - 1))]}; "
                f"SLO: TTFT <= {sc.slo.ttft_s} s, TPOT <= {sc.slo.tpot_s} s.")

    def evaluate(self, policy, snapshot):
        metrics, _ = simulate(policy, snapshot.params["scenario"], snapshot.params["seed"], snapshot.params["requests"])
        return metrics
