"""Every human-designed baseline on every scenario: who wins where.

    python benchmarks/simulator_baselines.py [--seeds 3] [--workers 2] [--json]

Each baseline program fills all four slots: ``default`` is every slot's first baseline
(schedule search, reschedule never, capacity-weighted JSQ, FCFS); ``slot:name`` swaps
in one other baseline. Scored on held-out seeds (1000, 1001, ...) through the sandboxed
Evaluator; prints mean total execution time and mean end-to-end latency per scenario
and the winner of each. If one baseline wins every scenario, the scenarios are not
exercising the trade-offs.
"""

from __future__ import annotations

import argparse
import json
import statistics

from rich.console import Console
from rich.table import Table

from autopoiesis import Evaluator, Task
from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.cli import positive_int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--scenario", action="append", help="only these scenarios")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        adapters = {name: SimulatorAdapter(name) for name in args.scenario or scenarios.names()}
    except AdapterError as e:
        parser.error(str(e))

    rows = []
    for name, adapter in adapters.items():
        programs = adapter.baselines()
        snapshots = [adapter.snapshot(1000 + i) for i in range(args.seeds)]
        with Evaluator(adapter, workers=args.workers) as evaluator:
            outcomes = evaluator.evaluate(Task(p.id, p.source, s) for p in programs.values() for s in snapshots)
        scores = {}
        for label, program in programs.items():
            results = [outcomes[(program.id, s.key)] for s in snapshots]
            if all(r.ok for r in results):
                scores[label] = {m: statistics.fmean(r.metrics[m] for r in results)
                                 for m in ("total_time", "mean_e2e", "p99_ttft", "slo_attainment")}
        best_total = min(scores, key=lambda k: scores[k]["total_time"])
        best_e2e = min(scores, key=lambda k: scores[k]["mean_e2e"])
        rows.append({"scenario": name, "best_total_time": best_total, "best_mean_e2e": best_e2e, "scores": scores})

    if args.json:
        print(json.dumps(rows))
        return
    console = Console()
    for row in rows:
        table = Table(title=f"{row['scenario']}: best total time {row['best_total_time']}, best mean e2e {row['best_mean_e2e']}")
        for col in ("baseline", "total time (s)", "mean e2e (s)", "p99 TTFT (s)", "SLO attainment"):
            table.add_column(col, justify="left" if col == "baseline" else "right")
        for label, s in sorted(row["scores"].items(), key=lambda kv: kv[1]["total_time"]):
            table.add_row(label, f"{s['total_time']:.1f}", f"{s['mean_e2e']:.2f}", f"{s['p99_ttft']:.2f}",
                          f"{s['slo_attainment']:.1%}")
        console.print(table)
    winners = {row["best_total_time"] for row in rows}
    console.print(f"\nwinners on total time: {sorted(winners)} "
                  f"({'no single baseline wins everywhere' if len(winners) > 1 else 'ONE BASELINE WINS EVERYWHERE'})")
    summary = Table(title="per-scenario winners")
    for col in ("scenario", "best total time", "best mean e2e"):
        summary.add_column(col)
    for row in rows:
        summary.add_row(row["scenario"], row["best_total_time"], row["best_mean_e2e"])
    console.print(summary)


if __name__ == "__main__":
    main()
