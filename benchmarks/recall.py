"""Does an online run gain from what earlier runs confirmed? The same live seed, recall on and off.

    python benchmarks/recall.py [--scenario NAME ...] [--teach 2] [--evolution-cost 3] [--workers 2] [--json]

For each dynamic scenario of the simulator, ``--teach`` online runs on other live seeds
(2000, 2001, ...) fill one archive. Then the live seed 1000 (the one paper.py's ``--quick``
serves) is served twice: with that archive and recall on, so its evolutions are also
seeded with the winners the guard confirmed in the teaching runs, and from an empty
archive. Every evolution costs a fixed ``--evolution-cost`` simulated seconds, so each run
is deterministic and the two differ only by the seeds recall adds. It prints total
execution time and mean end-to-end latency of both, of the best static baseline on that
seed, and how many deployments were of recalled programs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import baselines, dynamic_scenarios, online_arm  # noqa: E402 - the same arms as paper.py

LIVE_SEED, TEACH_SEED = 1000, 2000


def online(scenario: str, seed: int, archive: Archive, recall: bool, cost: float, workers: int) -> dict:
    """One online run as paper.py's (population 8, 3 generations), with a fixed evolution cost."""
    controller = online_arm(SimulatorAdapter(scenario), seed, workers, archive, evolution_cost_s=cost, recall=recall)
    summary = controller.run()
    recalled = [d for d in controller.deployments if d.kind == "deploy" and d.program in controller.recalled]
    return {"total_time": summary["live"]["total_time"], "mean_e2e": summary["live"]["mean_e2e"],
            "deployments": summary["deployments"], "rollbacks": summary["rollbacks"],
            "recalled": summary["recalled"], "recalled_deployments": len(recalled)}


def run_scenario(scenario: str, teach: int, cost: float, workers: int) -> dict:
    taught = Archive()
    for i in range(teach):
        online(scenario, TEACH_SEED + i, taught, False, cost, workers)  # each teaching run learns alone
    with_recall = online(scenario, LIVE_SEED, taught, True, cost, workers)
    without = online(scenario, LIVE_SEED, Archive(), False, cost, workers)
    _, _, scores = baselines(SimulatorAdapter(scenario), [LIVE_SEED], workers)
    best = min(scores, key=lambda k: scores[k]["total_time"])
    return {"scenario": scenario, "best_baseline": best, "best_baseline_total_time": scores[best]["total_time"],
            "best_baseline_mean_e2e": scores[best]["mean_e2e"], "recall": with_recall, "fresh": without,
            "total_time_gain": (without["total_time"] - with_recall["total_time"]) / without["total_time"],
            "mean_e2e_gain": (without["mean_e2e"] - with_recall["mean_e2e"]) / without["mean_e2e"]}


def table(rows: list[dict]) -> Table:
    t = Table(title=f"online with recall vs from an empty archive (live seed {LIVE_SEED})")
    for column in ("scenario", "best static (s)", "fresh total (s)", "recall total (s)", "total gain",
                   "fresh mean e2e", "recall mean e2e", "e2e gain", "recalled deploys / all"):
        t.add_column(column)
    for r in rows:
        f, c = r["fresh"], r["recall"]
        t.add_row(r["scenario"], f"{r['best_baseline_total_time']:.1f} ({r['best_baseline']})", f"{f['total_time']:.1f}",
                  f"{c['total_time']:.1f}", f"{r['total_time_gain']:+.1%}", f"{f['mean_e2e']:.2f}",
                  f"{c['mean_e2e']:.2f}", f"{r['mean_e2e_gain']:+.1%}",
                  f"{c['recalled_deployments']} / {c['deployments']}")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every dynamic one)")
    parser.add_argument("--teach", type=positive_int, default=2, help="earlier online runs that fill the archive")
    parser.add_argument("--evolution-cost", type=positive_float, default=3.0, help="simulated seconds per evolution")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = dynamic_scenarios(parser, args.scenario)
    console = Console(stderr=True)
    rows = []
    try:
        for name in names:
            with console.status(f"{name}: {args.teach} teaching run(s), then seed {LIVE_SEED} with and without recall"):
                rows.append(run_scenario(name, args.teach, args.evolution_cost, args.workers))
            console.print(f"{name}: total time {rows[-1]['total_time_gain']:+.1%}, "
                          f"mean e2e {rows[-1]['mean_e2e_gain']:+.1%} with recall", highlight=False)
    except AdapterError as e:
        parser.exit(2, f"error: {e}\n")
    summary = {"mean_total_time_gain": statistics.fmean(r["total_time_gain"] for r in rows),
               "mean_e2e_gain": statistics.fmean(r["mean_e2e_gain"] for r in rows)}
    if args.json:
        print(json.dumps({"rows": rows, **summary}, indent=1))
    else:
        Console().print(table(rows))
        print(f"mean over {len(rows)} scenario(s): total time {summary['mean_total_time_gain']:+.2%}, "
              f"mean e2e {summary['mean_e2e_gain']:+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
