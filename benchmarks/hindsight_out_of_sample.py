"""How much of the hindsight arm's gain is fitted to its seeds' noise.

    python benchmarks/hindsight_out_of_sample.py [--scenario NAME ...] [--budget 150] [--json]

paper.py's hindsight arm tunes the best baseline's constants on the very seeds it is
scored on (1000-1002), knowing the whole traces. Total time is one request's completion,
so part of what tuning finds is which variant got lucky on those seeds. This script tunes
the same way, then scores the tuned program on the next three seeds (1003-1005), which it
never saw: the in-sample gain is what the hindsight arm reports, the out-of-sample gain is
what the tuning knows about the scenario.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autopoiesis import Evaluator, Task
from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.archive import Archive
from autopoiesis.evolution import Config, Evolution
from autopoiesis.operators.tune import Constants

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import STATIONARY, WHOLE_RUN, baselines  # noqa: E402 - the same best baseline as paper.py
from autopoiesis.cli import positive_int

TUNED_ON, HELD_OUT = (1000, 1001, 1002), (1003, 1004, 1005)


def measure(adapter: SimulatorAdapter, budget: int, workers: int = 2,
            tuned_on=TUNED_ON, held_out=HELD_OUT) -> dict:
    programs, snapshots, scores = baselines(adapter, list(tuned_on), workers)
    best = min(scores, key=lambda k: scores[k]["total_time"])
    evolution = Evolution(adapter, Config(population=8, generations=10_000, budget=budget, workers=workers,
                                          held_out_snapshots=0, seed=7),
                          Archive(), operators=[(Constants(), 1.0)], seeds=[programs[best]], snapshots=snapshots)
    tuned = evolution.run().champion
    unseen = [adapter.snapshot(s) for s in held_out]
    with Evaluator(adapter, workers=workers, limits=WHOLE_RUN) as evaluator:
        out = evaluator.evaluate(Task(p.id, p.source, s) for p in (tuned, programs[best]) for s in snapshots + unseen)

    def total(program, snaps):
        return statistics.fmean(out[(program.id, s.key)].metrics["total_time"] for s in snaps)

    def gain(snaps):
        return (total(programs[best], snaps) - total(tuned, snaps)) / total(programs[best], snaps)

    return {"scenario": adapter.scenario, "best_baseline": best, "in_sample_gain": gain(snapshots),
            "out_of_sample_gain": gain(unseen), "tuned_is_the_baseline": tuned.id == programs[best].id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every dynamic one)")
    parser.add_argument("--budget", type=positive_int, default=150, help="evaluations for the tuning (per seed set)")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        adapters = [SimulatorAdapter(n) for n in args.scenario or [n for n in scenarios.names() if n != STATIONARY]]
    except AdapterError as e:
        parser.error(str(e))
    rows = []
    for adapter in adapters:
        rows.append(measure(adapter, args.budget, args.workers))
        r = rows[-1]
        if not args.json:
            print(f"{r['scenario']:20s} {r['best_baseline']:28s} in sample {r['in_sample_gain']:+.2%}  "
                  f"out of sample {r['out_of_sample_gain']:+.2%}", flush=True)
    means = {k: statistics.fmean(r[k] for r in rows) for k in ("in_sample_gain", "out_of_sample_gain")}
    if args.json:
        print(json.dumps({"scenarios": rows, **{f"mean_{k}": v for k, v in means.items()}}))
    else:
        print(f"mean: in sample {means['in_sample_gain']:+.2%}, out of sample {means['out_of_sample_gain']:+.2%}")


if __name__ == "__main__":
    main()
