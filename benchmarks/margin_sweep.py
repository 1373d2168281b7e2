"""Which deployment margin? The same online runs at several ``--margin`` values.

    python benchmarks/margin_sweep.py [--margins 0.01,0.03] [--seeds 1000,2000] [--scenario NAME ...]
                                      [--evolution-cost 3] [--workers 2] [--json]

A champion deploys only if it beats the incumbent on the twin by the margin. A low margin
deploys twin gains that may be noise (each such deployment is a bet, and a rollback pays
for it twice); a high one leaves real gains on the table. For every scenario of the
simulator and every live seed, this serves the same online run (paper.py's: from
``default``, population 8, 3 generations) at each margin. Every evolution costs a fixed
``--evolution-cost`` simulated seconds, so runs are deterministic and differ only by the
margin. It prints, per margin, the mean change of total time and of mean end-to-end latency
against the first margin over the dynamic scenarios, and the deployments and rollbacks.
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
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.cli import positive_float, positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import STATIONARY, dynamic_scenarios, online_arm  # noqa: E402

KEYS = ("total_time", "mean_e2e")


def online(scenario: str, seed: int, margin: float, cost: float, workers: int) -> dict:
    controller = online_arm(SimulatorAdapter(scenario), seed, workers, evolution_cost_s=cost, margin=margin)
    summary = controller.run()
    return {**{k: summary["live"][k] for k in KEYS}, "deployments": summary["deployments"],
            "rollbacks": summary["rollbacks"]}


def compare(rows: list[dict], margins: list[float]) -> list[dict]:
    """Per margin, over the dynamic scenarios: mean relative gain against the first margin
    (positive: this margin did better), and deployments and rollbacks in all."""
    base, out = str(margins[0]), []
    dynamic = [r for r in rows if scenarios.split_load(r["scenario"])[0] != STATIONARY]
    stationary = [r for r in rows if r not in dynamic]
    for m in map(str, margins):
        gains = {k: statistics.fmean((r[base][k] - r[m][k]) / r[base][k] for r in dynamic) if dynamic else 0.0
                 for k in KEYS}
        out.append({"margin": float(m), **{f"{k}_gain": v for k, v in gains.items()},
                    "deployments": sum(r[m]["deployments"] for r in dynamic),
                    "rollbacks": sum(r[m]["rollbacks"] for r in dynamic),
                    "stationary_total_time_gain": statistics.fmean(
                        (r[base]["total_time"] - r[m]["total_time"]) / r[base]["total_time"] for r in stationary)
                    if stationary else None})
    return out


def table(summary: list[dict], runs: int) -> Table:
    t = Table(title=f"online runs by margin, against the first ({runs} dynamic runs each)")
    for column in ("margin", "total time", "mean e2e", "deployments", "rollbacks", "stationary total time"):
        t.add_column(column)
    for s in summary:
        st = s["stationary_total_time_gain"]
        t.add_row(f"{s['margin']:g}", f"{s['total_time_gain']:+.2%}", f"{s['mean_e2e_gain']:+.2%}",
                  str(s["deployments"]), str(s["rollbacks"]), "-" if st is None else f"{st:+.2%}")
    return t


def _numbers(kind, text: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got '{text}'")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=lambda t: _numbers(float, t), default=[0.01, 0.03],
                        help="comma-separated; the first is the reference")
    parser.add_argument("--seeds", type=lambda t: _numbers(int, t), default=[1000, 2000], help="live seeds")
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: all)")
    parser.add_argument("--evolution-cost", type=positive_float, default=3.0, help="simulated seconds per evolution")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = dynamic_scenarios(parser, args.scenario, stationary=True)
    console = Console(stderr=True)
    rows = []
    try:
        for seed in args.seeds:
            for name in names:
                row = {"scenario": name, "seed": seed}
                with console.status(f"{name}, seed {seed}: online at margins {', '.join(map(str, args.margins))}"):
                    for m in args.margins:
                        row[str(m)] = online(name, seed, m, args.evolution_cost, args.workers)
                rows.append(row)
                console.print(f"{name}, seed {seed}: total time " + ", ".join(
                    f"{row[str(m)]['total_time']:.1f} s at {m:g}" for m in args.margins), highlight=False)
    except AdapterError as e:
        parser.exit(2, f"error: {e}\n")
    summary = compare(rows, args.margins)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
    else:
        Console().print(table(summary, sum(scenarios.split_load(r["scenario"])[0] != STATIONARY for r in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
