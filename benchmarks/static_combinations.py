"""The best static combination of the human-designed parts, chosen in hindsight.

    python benchmarks/static_combinations.py [--scenario NAME ...] [--seeds 3] [--load F]
                                             [--paper FILE] [--workers 2] [--json]

paper.py's baselines each swap one slot of ``default``. A serving system could ship any
combination of the human-designed parts instead: a planner, a re-planning rule, a router
and a queue order (2 x 4 x 3 x 3 = 72 static programs). This scores every combination on
whole runs of the same held-out live seeds as paper.py (1000, 1001, ...; through the
sandboxed Evaluator) and reports, per scenario, the best one chosen knowing those seeds,
against paper.py's best baseline. Its gain is what recombining human parts, without
adapting and with hindsight, has to offer; ``--paper FILE`` (the output of
``paper.py --json`` at the same load and seeds) adds where Autopoiesis online stands
against it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.cli import positive_float, positive_int
from autopoiesis.program import Program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import STATIONARY, whole_runs  # noqa: E402 - scored exactly as paper.py scores its baselines


def combinations(adapter) -> dict[str, Program]:
    """Every combination of the slots' baselines, functions in slot order (as ``Adapter.baselines``)."""
    slots = [slot for slot in adapter.slots() if slot.baselines]
    out = {}
    for choice in itertools.product(*(slot.baselines.items() for slot in slots)):
        label = "+".join(f"{slot.name}:{name}" for slot, (name, _) in zip(slots, choice))
        source = "\n\n\n".join(text.strip() for _, text in choice) + "\n"
        out[label] = Program(source, name=label)
    return out


def measure(adapter: SimulatorAdapter, seeds: list[int], workers: int) -> dict:
    """Every combination on whole runs of ``seeds``; the best one against the best single-slot baseline."""
    programs = combinations(adapter)
    _, scores = whole_runs(adapter, programs, seeds, workers)
    totals = {label: metrics["total_time"] for label, metrics in scores.items()}
    paper_labels = {p.id: label for label, p in adapter.baselines().items()}  # default and the one-slot swaps
    baselines = {paper_labels[programs[label].id]: t for label, t in totals.items() if programs[label].id in paper_labels}
    best_baseline = min(baselines, key=baselines.get)
    best = min(totals, key=totals.get)
    return {"scenario": adapter.scenario, "seeds": seeds, "combinations": len(programs), "scored": len(totals),
            "best_baseline": best_baseline, "best_baseline_total_time": baselines[best_baseline],
            "best_combination": best, "best_combination_total_time": totals[best],
            "gain": (baselines[best_baseline] - totals[best]) / baselines[best_baseline]}


def paper_times(path: str, parser) -> dict[str, float]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        parser.error(f"--paper {path}: cannot read it ({e.strerror})")
    try:
        return {row["scenario"]: float(row["autopoiesis_total_time"]) for row in json.loads(text)["scenarios"]}
    except (ValueError, KeyError, TypeError) as e:
        parser.error(f"--paper {path}: not the output of paper.py --json ({type(e).__name__}: {e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every one)")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--load", type=positive_float, default=1.0, help="arrival rates times F (NAME@F)")
    parser.add_argument("--paper", metavar="FILE", help="paper.py --json output to compare Autopoiesis with")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.scenario or scenarios.names()
    if args.load != 1.0:
        names = [f"{n}@{args.load:g}" for n in names]
    try:
        for name in names:
            scenarios.load(name, 1000)
    except (AdapterError, scenarios.ScenarioError) as e:
        parser.error(str(e))
    autopoiesis = paper_times(args.paper, parser) if args.paper else {}
    seeds = [1000 + i for i in range(args.seeds)]
    rows = []
    for name in names:
        row = measure(SimulatorAdapter(name), seeds, args.workers)
        if name in autopoiesis:
            ours = autopoiesis[name]
            row["autopoiesis_total_time"] = ours
            row["autopoiesis_vs_best_combination"] = (row["best_combination_total_time"] - ours) / row["best_combination_total_time"]
        rows.append(row)
        if not args.json:
            line = (f"{name:24s} best baseline {row['best_baseline_total_time']:7.1f} s ({row['best_baseline']})  "
                    f"best of {row['scored']} combinations {row['best_combination_total_time']:7.1f} s  "
                    f"gain {row['gain']:+.1%}")
            if "autopoiesis_total_time" in row:
                line += f"  Autopoiesis {row['autopoiesis_total_time']:7.1f} s ({row['autopoiesis_vs_best_combination']:+.1%})"
            print(line + f"\n{'':24s} {row['best_combination']}", flush=True)
    dynamic = [r for r in rows if scenarios.split_load(r["scenario"])[0] != STATIONARY]
    summary = {"dynamic_mean_gain": statistics.fmean(r["gain"] for r in dynamic) if dynamic else None}
    if dynamic and all("autopoiesis_total_time" in r for r in dynamic):
        summary["dynamic_mean_autopoiesis_vs_best_combination"] = statistics.fmean(
            r["autopoiesis_vs_best_combination"] for r in dynamic)
        summary["dynamic_autopoiesis_ahead"] = sum(r["autopoiesis_vs_best_combination"] > 0 for r in dynamic)
    if args.json:
        print(json.dumps({"scenarios": rows, "summary": summary, "load": args.load}))
    else:
        for key, value in summary.items():
            print(f"{key}: {value:+.1%}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
