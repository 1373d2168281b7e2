"""How much does an online knob matter? The same online runs at several values of one knob.

    python benchmarks/knob_sweep.py [--knob margin=0.01,0.03] [--seeds 1000,2000] [--scenario NAME ...]
                                    [--evolution-cost 3] [--workers 2] [--json]

``--knob NAME=V1,V2,...`` names one of ``OnlineConfig``'s knobs (docs/online.md, Knobs:
``margin``, ``history``, ``period``, ``window_s``, ``holdout``, ...) and the values to serve
at; the first is the reference. For every scenario of the simulator and every live seed,
this serves the same online run (paper.py's: from ``default``, population 8, 3 generations)
at each value. Every evolution costs a fixed ``--evolution-cost`` simulated seconds, so runs
are deterministic and differ only by the knob. It prints, per value, the mean change of
total time and of mean end-to-end latency against the first value over the dynamic
scenarios (positive: better), and the deployments and rollbacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.cli import positive_float, positive_int
from autopoiesis.online import OnlineConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import STATIONARY, dynamic_scenarios, online_arm  # noqa: E402

KEYS = ("total_time", "mean_e2e")
#: the knobs a sweep may move: those that change what the loop decides (not the live seed,
#: the evolution's cost, which this benchmark fixes, or how often a wall-clock adapter is polled)
KNOBS = ("window_s", "history", "horizon", "period", "cooldown", "drift_threshold", "margin", "replan_margin",
         "holdout", "guard_windows", "guard_tolerance", "max_fallback_rate", "similar", "step_s")


def online(scenario: str, seed: int, knob: str, value, cost: float, workers: int) -> dict:
    controller = online_arm(SimulatorAdapter(scenario), seed, workers, evolution_cost_s=cost, **{knob: value})
    summary = controller.run()
    return {**{k: summary["live"][k] for k in KEYS}, "deployments": summary["deployments"],
            "rollbacks": summary["rollbacks"]}


def compare(rows: list[dict], values: list) -> list[dict]:
    """Per value, over the dynamic scenarios: mean relative gain against the first value
    (positive: this value did better), and deployments and rollbacks in all."""
    base, out = str(values[0]), []
    dynamic = [r for r in rows if scenarios.split_load(r["scenario"])[0] != STATIONARY]
    stationary = [r for r in rows if r not in dynamic]
    for v in map(str, values):
        gains = {k: statistics.fmean((r[base][k] - r[v][k]) / r[base][k] for r in dynamic) if dynamic else 0.0
                 for k in KEYS}
        out.append({"value": v, **{f"{k}_gain": g for k, g in gains.items()},
                    "deployments": sum(r[v]["deployments"] for r in dynamic),
                    "rollbacks": sum(r[v]["rollbacks"] for r in dynamic),
                    "stationary_total_time_gain": statistics.fmean(
                        (r[base]["total_time"] - r[v]["total_time"]) / r[base]["total_time"] for r in stationary)
                    if stationary else None})
    return out


def table(knob: str, summary: list[dict], runs: int) -> Table:
    t = Table(title=f"online runs by {knob}, against the first value ({runs} dynamic runs each)")
    for column in (knob, "total time", "mean e2e", "deployments", "rollbacks", "stationary total time"):
        t.add_column(column)
    for s in summary:
        st = s["stationary_total_time_gain"]
        t.add_row(s["value"], f"{s['total_time_gain']:+.2%}", f"{s['mean_e2e_gain']:+.2%}",
                  str(s["deployments"]), str(s["rollbacks"]), "-" if st is None else f"{st:+.2%}")
    return t


def knob_values(text: str) -> tuple[str, list]:
    """``NAME=V1,V2,...`` as the knob and its values, each of the knob's type and accepted by
    ``OnlineConfig`` (a value it refuses is one line of usage, not a run that fails later)."""
    name, sep, listed = text.partition("=")
    name = name.strip()
    if not sep or name not in KNOBS:
        raise argparse.ArgumentTypeError(f"expected KNOB=V1,V2,... with KNOB one of {', '.join(KNOBS)}; got '{text}'")
    kind = type(getattr(OnlineConfig(), name))
    values = []
    for item in (x.strip() for x in listed.split(",") if x.strip()):
        try:
            value = {"true": True, "false": False}[item.lower()] if kind is bool else kind(item)
        except (KeyError, ValueError):
            expected = {bool: "true or false", int: "a whole number"}.get(kind, "a number")
            raise argparse.ArgumentTypeError(f"{name}={item}: expected {expected}") from None
        try:
            dataclasses.replace(OnlineConfig(), **{name: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{name}={item}: {e}") from None
        values.append(value)
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"expected at least two values of {name} to compare; got '{text}'")
    return name, values


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got '{text}'") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected non-negative seeds, got '{text}'")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knob", type=knob_values, default=("margin", [0.01, 0.03]), metavar="NAME=V1,V2,...",
                        help="the knob and its values, comma-separated; the first is the reference (default margin=0.01,0.03)")
    parser.add_argument("--seeds", type=_seeds, default=[1000, 2000], help="live seeds")
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: all)")
    parser.add_argument("--evolution-cost", type=positive_float, default=3.0, help="simulated seconds per evolution")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = dynamic_scenarios(parser, args.scenario, stationary=True)
    knob, values = args.knob
    console = Console(stderr=True)
    rows = []
    try:
        for seed in args.seeds:
            for name in names:
                row = {"scenario": name, "seed": seed}
                with console.status(f"{name}, seed {seed}: online at {knob} = {', '.join(map(str, values))}"):
                    for v in values:
                        row[str(v)] = online(name, seed, knob, v, args.evolution_cost, args.workers)
                rows.append(row)
                console.print(f"{name}, seed {seed}: total time " + ", ".join(
                    f"{row[str(v)]['total_time']:.1f} s at {v}" for v in values), highlight=False)
    except AdapterError as e:
        parser.exit(2, f"error: {e}\n")
    summary = compare(rows, values)
    if args.json:
        print(json.dumps({"knob": knob, "rows": rows, "summary": summary}, indent=1))
    else:
        Console().print(table(knob, summary, sum(scenarios.split_load(r["scenario"])[0] != STATIONARY for r in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
