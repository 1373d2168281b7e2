"""What was each deployment worth? The twin's promise against the whole run without it.

    python benchmarks/deployment_value.py [--scenario NAME ...] [--seed 1000] [--margin 0.01]
                                          [--start default|offline] [--evolution-cost 3] [--workers 2] [--json]

For every dynamic scenario of the simulator, one online run (paper.py's: population 8, 3
generations; every evolution costs a fixed ``--evolution-cost`` simulated seconds) is
served on the live seed, from ``default`` or, with ``--start offline``, from the champion
of an offline run as ``offline_start.py`` evolves it (a few minutes more per scenario). Its schedule of deployments and rollbacks is then
replayed on the same live system, once as it was (which reproduces the run's total time)
and once per deployment with that one left out: the program before it serves on until the
next change. The worth of a deployment is (total without it - total with it) / total
without it: positive, it shortened the run. It prints each deployment's twin gain (what
the champion beat the incumbent by on its snapshot) next to its worth, and the mean worth
by twin gain. Leaving one out keeps the later deployments, which were bred from the live
state it left, so each worth is that deployment's effect given the rest of the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.archive import Archive
from autopoiesis.cli import positive_float, positive_int
from autopoiesis.evolution import Config, Evolution
from autopoiesis.program import Program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import dynamic_scenarios, online_arm  # noqa: E402

BANDS = ((0.0, 0.03), (0.03, 0.10), (0.10, float("inf")))  # twin gains, for the summary


def served(args) -> float:
    """Total time of the live seed served with ``schedule``: (live time, program source) in turn."""
    options, seed, schedule = args
    adapter = SimulatorAdapter(**options)
    default = adapter.baselines()["default"]
    adapter.start(seed=seed)
    try:
        for at, source in schedule:
            if at > 0:
                adapter.observe(at)
            adapter.deploy(Program(source=source), [default])
        adapter.observe(float("inf"))
        return adapter.live_metrics()["total_time"]
    finally:
        adapter.stop()


def leave_one_out(options: dict, seed: int, schedule: list, map_=map) -> tuple[float, list[float]]:
    """Total time of ``schedule`` served as it was, and with each change after the first left out."""
    jobs = [schedule] + [schedule[:k] + schedule[k + 1:] for k in range(1, len(schedule))]
    totals = list(map_(served, [(options, seed, s) for s in jobs]))
    return totals[0], totals[1:]


def run_scenario(scenario: str, seed: int, margin: float, cost: float, workers: int, pool, start: str) -> dict:
    archive = Archive()
    initial = None
    if start == "offline":  # as `autopoiesis evolve --adapter simulator --scenario S` evolves it
        initial = Evolution(SimulatorAdapter(scenario), Config(workers=workers), Archive(),
                            adapter_spec="simulator").run().champion
    controller = online_arm(SimulatorAdapter(scenario), seed, workers, archive, initial=initial,
                            evolution_cost_s=cost, margin=margin)
    live = controller.run()["live"]["total_time"]
    changes = [d for d in controller.deployments if d.kind in ("initial", "deploy", "rollback")]
    schedule = [(d.time, archive.program(d.program).source) for d in changes]
    replayed, without = leave_one_out({"scenario": scenario}, seed, schedule, pool.map)
    deployments = []
    for d, total in zip(changes[1:], without):
        twin = ((d.incumbent_fitness - d.champion_fitness) / d.incumbent_fitness
                if d.kind == "deploy" and d.incumbent_fitness else None)
        deployments.append({"time": d.time, "kind": d.kind, "program": d.program, "twin_gain": twin,
                            "worth": (total - replayed) / total})
    return {"scenario": scenario, "seed": seed, "start": start, "live_total_time": live,
            "replayed_total_time": replayed, "deployments": deployments}


def bands(rows: list[dict]) -> list[dict]:
    out = []
    for low, high in BANDS:
        worth = [d["worth"] for r in rows for d in r["deployments"]
                 if d["twin_gain"] is not None and low <= d["twin_gain"] < high]
        out.append({"twin_gain_from": low, "twin_gain_to": high if high < float("inf") else None,
                    "deployments": len(worth),
                    "mean_worth": statistics.fmean(worth) if worth else None,
                    "harmful": sum(w < 0 for w in worth)})
    rollbacks = [d["worth"] for r in rows for d in r["deployments"] if d["kind"] == "rollback"]
    out.append({"rollbacks": len(rollbacks), "mean_worth": statistics.fmean(rollbacks) if rollbacks else None,
                "harmful": sum(w < 0 for w in rollbacks)})
    return out


def table(rows: list[dict]) -> Table:
    t = Table(title="each deployment: the twin's gain and its worth on the whole run")
    for column in ("scenario", "live time (s)", "kind", "twin gain", "worth"):
        t.add_column(column)
    for r in rows:
        for d in r["deployments"]:
            t.add_row(r["scenario"], f"{d['time']:.0f}", d["kind"],
                      "-" if d["twin_gain"] is None else f"{d['twin_gain']:+.1%}", f"{d['worth']:+.2%}")
    return t


def main(argv: list[str] | None = None) -> int:
    import multiprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every dynamic one)")
    parser.add_argument("--seed", type=positive_int, default=1000, help="the live seed")
    parser.add_argument("--margin", type=float, default=0.01, help="the online runs' --margin")
    parser.add_argument("--start", choices=("default", "offline"), default="default",
                        help="what the online run starts serving: default, or an offline run's champion")
    parser.add_argument("--evolution-cost", type=positive_float, default=3.0, help="simulated seconds per evolution")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = dynamic_scenarios(parser, args.scenario)
    if args.margin < 0:
        parser.error(f"--margin must be non-negative, got {args.margin}")
    console = Console(stderr=True)
    rows = []
    try:
        with multiprocess.Pool(args.workers) as pool:
            for name in names:
                with console.status(f"{name}: online run on seed {args.seed}, then its schedule without each change"):
                    rows.append(run_scenario(name, args.seed, args.margin, args.evolution_cost, args.workers, pool,
                                             args.start))
                console.print(f"{name}: " + (", ".join(f"{d['kind']} at {d['time']:.0f} s {d['worth']:+.2%}"
                                                       for d in rows[-1]["deployments"]) or "no deployment"),
                              highlight=False)
    except AdapterError as e:
        parser.exit(2, f"error: {e}\n")
    summary = bands(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
    else:
        Console().print(table(rows))
        for b in summary[:-1]:
            if b["deployments"]:
                upper = "up" if b["twin_gain_to"] is None else f"to {b['twin_gain_to']:.0%}"
                print(f"twin gain {b['twin_gain_from']:.0%} {upper}: {b['deployments']} deployments, "
                      f"mean worth {b['mean_worth']:+.2%}, {b['harmful']} harmful")
        if summary[-1]["rollbacks"]:
            print(f"rollbacks: {summary[-1]['rollbacks']}, mean worth {summary[-1]['mean_worth']:+.2%}, "
                  f"{summary[-1]['harmful']} harmful")
    return 0


if __name__ == "__main__":
    sys.exit(main())
