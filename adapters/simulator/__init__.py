"""The simulator adapter: a heterogeneous LLM-serving cluster under runtime dynamics.

The embedded default of the project and the twin on which candidates are scored:
``autopoiesis evolve --adapter simulator --scenario NAME``.
"""

from __future__ import annotations

from collections import Counter

from autopoiesis.adapters.base import Adapter, AdapterError
from autopoiesis.metrics import WINDOW_METRICS, Objective, RollingWindow, Snapshot

from . import hardware, scenario as scenarios
from .costmodel import ReplicaCost, calibration
from .engine import Simulation
from .slots import SLOTS

__all__ = ["SimulatorAdapter", "simulate"]


def simulate(policy, scenario_name: str, seed: int = 0, requests_limit: int | None = None, observer=None):
    """Run one compiled policy on a scenario; returns (metrics, engine Result)."""
    sc = scenarios.load(scenario_name, seed, requests_limit)
    sim = build(sc, policy, scenario_name)
    sim.observer = observer
    result = sim.run()
    return metrics_of(sc, result), result


def build(sc, policy, scenario_name: str) -> Simulation:
    """A Simulation of a loaded scenario."""
    gpus, model = hardware_of(sc, scenario_name)
    return Simulation(sc, policy, gpus, model, lambda g: calibration(sc.calibration, g))


def hardware_of(sc, scenario_name: str):
    """The scenario's GPU table and model; unknown hardware is the user's mistake, said so."""
    try:
        gpus = hardware.load_gpus(sc.gpu_tables)
        model = hardware.model(sc.model, sc.model_tables)
        unknown = sorted({g for _, g in sc.initial_gpus} - set(gpus))
        unknown += sorted({g for _, kind, ids in sc.cluster_events if kind == "join" for _, g in ids} - set(gpus))
        if unknown:
            raise hardware.UnknownHardware(f"unknown GPU type(s) {', '.join(unknown)} (add them with gpu_tables)")
    except hardware.UnknownHardware as e:
        raise scenarios.ScenarioError(f"scenario {scenario_name}: {e}") from None
    return gpus, model


def check(scenario_name: str) -> None:
    """Raise ScenarioError if the scenario cannot be served: its fields, trace, tables and hardware, and
    a model that no GPU type there at 0 s can hold (before, every policy failed on "empty plan")."""
    sc = scenarios.load(scenario_name, 0, 1)
    gpus, model = hardware_of(sc, scenario_name)
    counts = Counter(g for _, g in sc.initial_gpus)
    if not any(ReplicaCost(model, gpus[g], tp, pp, calibration(sc.calibration, g)).fits()
               for g, n in counts.items() for tp in range(1, n + 1) for pp in range(1, n // tp + 1)):
        there = ", ".join(f"{n} x {g}" for g, n in counts.items())
        raise scenarios.ScenarioError(f"scenario {scenario_name}: {model.name} fits on none of the GPUs there at 0 s "
                                      f"({there}) with room for 4096 tokens of KV cache: add GPUs or take a smaller model")


def metrics_of(sc, result) -> dict[str, float]:
    """Whole-run metrics: the window summary over every request, total time and the overheads."""
    window = RollingWindow()
    for record in result.records:
        window.add(record)
    metrics = window.summary(sc.slo)
    first = min((r[0] for r in sc.requests), default=0.0)
    metrics.update(
        total_time=result.end - first,
        gpu_hours=result.gpu_seconds / 3600.0,
        cost_usd=result.cost_usd,
        overhead_scheduling_s=result.overheads.scheduling_s,
        overhead_reconfiguration_gpu_s=result.overheads.reconfiguration_s,
        reconfigurations=float(result.overheads.reconfigurations),
        recomputed_tokens=float(result.overheads.recomputed_tokens),
    )
    return metrics


def _first(requests) -> int | None:
    """``-o requests=N``: serve only the first N requests of each workload (None: all of them)."""
    if requests is None:
        return None
    try:
        count = int(requests)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(count) != str(requests).strip():
        raise AdapterError(f"requests must be a whole number >= 1 (the first N requests of each workload), got {requests!r}")
    return count


class SimulatorAdapter(Adapter):
    """Discrete-event simulator of a heterogeneous LLM-serving cluster (the embedded default)."""

    name = "simulator"
    objectives = (Objective("total_time", "min"), Objective("mean_e2e", "min"), Objective("p99_ttft", "min"),
                  Objective("slo_attainment", "max"), Objective("cost_usd", "min"))
    metrics = (*WINDOW_METRICS, "gpu_hours", "cost_usd", "overhead_scheduling_s", "overhead_reconfiguration_gpu_s",
               "reconfigurations", "recomputed_tokens")  # metrics_of
    headline = ("total_time", "mean_e2e", "p99_ttft", "slo_attainment", "cost_usd", "overhead_reconfiguration_gpu_s")

    def __init__(self, scenario: str = "mixed", requests: int | None = None):
        try:
            check(str(scenario))
        except scenarios.ScenarioError as e:
            raise AdapterError(str(e)) from None
        self.scenario = str(scenario)
        self.requests = _first(requests)

    def slots(self):
        return list(SLOTS)

    def snapshot(self, seed: int) -> Snapshot:
        digest = scenarios.digest(self.scenario)
        return Snapshot(self.name, {"scenario": self.scenario, "digest": digest, "seed": seed,
                                    "requests": self.requests}, label=f"{self.scenario} seed {seed}")

    # -- the live system (online evolution) -----------------------------------------------
    guard_metric = "mean_e2e_open"  # a window's total time is its length; latency is what regresses
    disruption_metric = "reconfigurations"  # a re-plan reloads weights and recomputes what migrates

    def start(self, seed: int = 1000) -> None:
        """Serve the scenario's workload for ``seed`` live, in simulated time."""
        from .live import LiveSimulation

        self.live = LiveSimulation(self.scenario, seed, self.requests, self.slots())
        self.slo = self.live.scenario.slo

    def stop(self) -> None:
        pass

    def now(self) -> float:
        return self._live().now()

    def observe(self, until: float):
        return self._live().observe(until)

    def deploy(self, program, fallbacks=()) -> None:
        self._live().deploy(program, list(fallbacks))

    @property
    def isolate_policies(self) -> bool:
        """Always False: programs run in the serving process (docs/sandbox.md, section 4)."""
        return False

    @isolate_policies.setter
    def isolate_policies(self, value: bool) -> None:
        if value:
            raise AdapterError("the simulator cannot serve programs from decision processes (--isolate): schedule "
                               "and reschedule ask its live cost model, which cannot leave the serving process")

    def window_snapshot(self, since: float, until: float, incumbent, horizon_s: float = 0.0) -> Snapshot:
        params = self._live().window_snapshot(since, until, incumbent, horizon_s)
        return Snapshot(self.name, params, label=f"{self.scenario} live {since:.0f}-{until:.0f} s")

    def live_metrics(self) -> dict:
        """Whole-run metrics of the live system (total time, latency, overheads)."""
        return self._live().metrics()

    def _live(self):
        if getattr(self, "live", None) is None:
            raise AdapterError("the simulator's live system is not started (call start())")
        return self.live

    def __getstate__(self):  # worker processes need the twin, not the live system
        return {k: v for k, v in self.__dict__.items() if k != "live"}

    def summarize(self, snapshot) -> str:
        if snapshot.params.get("kind") == "window":
            p = snapshot.params
            span = max(1e-9, p["until"] - p["since"])
            prompts = sorted(r[1] for r in p["requests"]) or [0]
            gpus = {}
            for _, g in p["gpus"]:
                gpus[g] = gpus.get(g, 0) + 1
            return (f"A live window of scenario {p['scenario']}, {p['since']:.0f}-{p['until']:.0f} s: "
                    f"{len(p['requests'])} requests ({len(p['requests']) / span:.1f}/s, including the "
                    f"{p.get('backlog', 0)} queued when it opened, which arrive first), "
                    f"prompt tokens median {prompts[len(prompts) // 2]}; GPUs online: "
                    f"{', '.join(f'{n}x {g}' for g, n in sorted(gpus.items()))}; current plan: "
                    f"{len(p['plan'])} replica(s). Candidates start from that plan.")
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
        if snapshot.params.get("kind") == "window":
            from .live import replay

            return replay(policy, snapshot.params)
        metrics, _ = simulate(policy, snapshot.params["scenario"], snapshot.params["seed"], snapshot.params["requests"])
        return metrics
