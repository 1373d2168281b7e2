"""The torch engine served live: each static queue order against online evolution, and the twin's error.

    python benchmarks/engine_online.py [--scenario burst] [--rate 3 | --load-factor 1] [--duration 120] [--seeds 1]
                                       [-o device=cuda -o hidden=2048 ...] [--json]

Every arm serves the same load (per seed) on the same model at real time: each
human-designed ``priority`` baseline static, then Autopoiesis online starting from ``fcfs``
(offline operators, one worker: the evolution plane shares the two cores with the engine,
as it would in production), then the same online run with a margin no champion meets,
which serves fcfs throughout and so measures what the evolution plane alone costs serving. For each static arm the twin also replays the whole load, with
the step costs timed at start and with those costs scaled to the level of that run's own
live steps (as the online twin scales them), which gives its error on whole runs and whether it ranks the
baselines as the live engine does. Takes about (baselines + 2) x duration per seed.

``-o KEY=VALUE`` gives the engine's options as the CLI does. ``--load-factor F`` sets the
rate to F times the engine's capacity as its twin estimates it (the requests per second it
serves of the load's length mix when all of them wait from the start), so a load means
the same on any model and device. On the default model on this project's CPUs that
capacity is about 6 to 6.5 req/s, so the default 3 req/s is a factor of about 0.5, and
the burst's middle fifth (2.25 times the mean rate) runs just past it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters.base import AdapterError, load_adapter
from autopoiesis.adapters import engine as engine_adapter
from autopoiesis.adapters.engine import EngineAdapter, score
from autopoiesis.adapters.engine.engine import scale
from autopoiesis.archive import Archive
from autopoiesis.cli import UserError, parse_options, positive_float, positive_int
from autopoiesis.evolution import Config
from autopoiesis.metrics import RollingWindow
from autopoiesis.online import Controller, OnlineConfig
from autopoiesis.sandbox import compile_policy

HEADLINE = ("mean_e2e", "mean_ttft", "p99_ttft", "slo_attainment")
PLANE_ONLY = "fcfs, evolving, never deploying"  # the serving cost of the evolution plane alone


def static(adapter: EngineAdapter, program, seed: int) -> tuple[dict[str, float], float]:
    """The live metrics of ``program`` serving the whole load, and how much slower its steps ran than timed."""
    kept, engine_adapter.STEPS_KEPT = engine_adapter.STEPS_KEPT, 10**6  # the level is over all its steps
    try:
        adapter.start(seed)
    finally:  # the online arms keep the usual count: window_metrics scales over them every window
        engine_adapter.STEPS_KEPT = kept
    try:
        adapter.deploy(program)
        while not adapter.observe(adapter.now() + 5.0).finished:
            pass
        window = RollingWindow()
        for record in adapter.live["records"]:
            window.add(record)
        return window.summary(adapter.slo), scale(adapter.fitted_costs(), adapter.live["steps"])
    finally:
        adapter.stop()


def online(adapter: EngineAdapter, seed: int, window_s: float, workers: int, deploys: bool = True) -> tuple[dict, dict]:
    """Serve from ``fcfs`` and evolve; ``deploys=False`` keeps fcfs (what the evolution plane costs)."""
    knobs = {} if deploys else {"margin": 1e9}
    controller = Controller(adapter, OnlineConfig(window_s=window_s, live_seed=seed, **knobs),
                            Config(population=8, generations=3, workers=workers, held_out_snapshots=0, seed=seed),
                            archive=Archive())
    summary = controller.run()
    return summary["live"], summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="burst")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=positive_float, default=3.0, help="mean arrival rate (req/s)")
    rate.add_argument("--load-factor", type=positive_float, help="the mean rate as a multiple of the twin's capacity")
    parser.add_argument("--duration", type=positive_float, default=120.0)
    parser.add_argument("--seeds", type=positive_int, default=1, help="live loads (seeds 1000, 1001, ...)")
    parser.add_argument("--window", type=positive_float, default=10.0, help="online window (s)")
    parser.add_argument("--workers", type=positive_int, default=1)
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine option, as for the CLI (device=cuda, hidden=2048, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        options = {**parse_options(args.option), "scenario": args.scenario, "rate": args.rate,
                   "duration": args.duration}
        adapter = load_adapter("engine", options)
        costs = adapter.fitted_costs()
    except (AdapterError, UserError) as e:
        parser.error(str(e))
    capacity = adapter.capacity()
    if args.load_factor:
        adapter.rate = args.load_factor * capacity
    console.print(f"engine on {adapter.device} ({', '.join(f'{k} {v}' for k, v in adapter.model_shape.items())}); "
                  f"fitted step costs: {costs}; the twin's capacity {capacity:.2f} req/s; "
                  f"serving {args.scenario} at {adapter.rate:.2f} req/s", highlight=False)
    rows: dict[str, list[dict]] = {}
    twin_rows: dict[str, list[float]] = {}  # the twin's mean e2e, with the costs timed at start
    refit_rows: dict[str, list[float]] = {}  # ... scaled to the level of the live run's own steps
    extra: list[dict] = []
    logs = f"runs/engine-bench-{time.strftime('%Y%m%d-%H%M%S')}"  # each arm's requests.jsonl
    for seed in range(1000, 1000 + args.seeds):
        for name, program in adapter.baselines().items():
            started, adapter.run_dir = time.monotonic(), f"{logs}/{name}-{seed}"
            live, factor = static(adapter, program, seed)
            rows.setdefault(name, []).append(live)
            policy = compile_policy(program.source, adapter.slots(), program.id)
            params = adapter._params(adapter.load(seed))
            twin_rows.setdefault(name, []).append(score(policy, params)["mean_e2e"])
            refit_rows.setdefault(name, []).append(score(policy, {**params, "costs": costs.scaled(factor).to_dict()})["mean_e2e"])
            console.print(f"seed {seed} {name}: live mean e2e {live['mean_e2e']:.3f} s; twin {twin_rows[name][-1]:.3f} s "
                          f"(timed costs), {refit_rows[name][-1]:.3f} s (costs x the run's level, {factor:.2f}) "
                          f"({time.monotonic() - started:.0f} s)", highlight=False)
        for arm, deploys in (("autopoiesis online", True), (PLANE_ONLY, False)):
            started, adapter.run_dir = time.monotonic(), f"{logs}/online-{seed}" + ("" if deploys else "-no-deploy")
            live, summary = online(adapter, seed, args.window, args.workers, deploys)
            rows.setdefault(arm, []).append(live)
            if deploys:
                extra.append({k: summary[k] for k in ("deployments", "rollbacks", "evolutions", "evaluations",
                                                      "fallbacks")})
            console.print(f"seed {seed} {arm}: live mean e2e {live['mean_e2e']:.3f} s, {summary['deployments']} "
                          f"deployment(s) ({time.monotonic() - started:.0f} s)", highlight=False)

    mean = {arm: {k: statistics.fmean(r[k] for r in runs) for k in HEADLINE} for arm, runs in rows.items()}
    twin = {arm: statistics.fmean(v) for arm, v in twin_rows.items()}
    refit = {arm: statistics.fmean(v) for arm, v in refit_rows.items()}
    static_arms = list(twin)
    best = min(static_arms, key=lambda a: mean[a]["mean_e2e"])
    ours = mean["autopoiesis online"]["mean_e2e"]

    def error(model: dict) -> float:
        return statistics.fmean(abs(model[a] - mean[a]["mean_e2e"]) / mean[a]["mean_e2e"] for a in static_arms)

    def same_order(model: dict) -> bool:
        return sorted(static_arms, key=model.get) == sorted(static_arms, key=lambda a: mean[a]["mean_e2e"])

    result = {
        "scenario": args.scenario, "rate": adapter.rate, "twin_capacity": capacity, "duration": args.duration,
        "seeds": args.seeds, "device": adapter.device, "model": adapter.model_shape,
        "costs": costs.to_dict(), "arms": mean, "twin_mean_e2e": twin, "twin_refit_mean_e2e": refit,
        "best_baseline": best, "improvement_vs_best_baseline": (mean[best]["mean_e2e"] - ours) / mean[best]["mean_e2e"],
        "evolution_plane_cost": mean[PLANE_ONLY]["mean_e2e"] / mean["fcfs"]["mean_e2e"] - 1,
        "twin_error": error(twin), "twin_refit_error": error(refit),
        "twin_ranks_like_live": same_order(twin), "twin_refit_ranks_like_live": same_order(refit),
        "online": extra,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"engine on {adapter.device}, {args.scenario} at {adapter.rate:.3g} req/s for {args.duration:.0f} s, {args.seeds} seed(s)")
    for col in ("arm", "mean e2e (s)", "mean TTFT (s)", "p99 TTFT (s)", "SLO", "twin: timed costs", "twin: run's level"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, m in mean.items():
        table.add_row(arm, f"{m['mean_e2e']:.3f}", f"{m['mean_ttft']:.3f}", f"{m['p99_ttft']:.2f}",
                      f"{m['slo_attainment']:.3f}", f"{twin[arm]:.3f}" if arm in twin else "-",
                      f"{refit[arm]:.3f}" if arm in refit else "-")
    Console().print(table)
    print(f"online vs the best static ({best}): {result['improvement_vs_best_baseline']:+.1%} on mean e2e; "
          f"deployments {sum(e['deployments'] for e in extra)}, rollbacks {sum(e['rollbacks'] for e in extra)}")
    print(f"the evolution plane alone (never deploying) changed fcfs's mean e2e by {result['evolution_plane_cost']:+.1%}")
    for label, key in (("timed at start", "twin"), ("scaled to each run's steps", "twin_refit")):
        print(f"twin on whole runs, costs {label}: mean error {result[key + '_error']:.0%}; "
              f"ranks the baselines as live does: {result[key + '_ranks_like_live']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
