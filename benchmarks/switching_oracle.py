"""How much any online switching could gain: a clairvoyant that switches between baselines.

    python benchmarks/switching_oracle.py [--scenario NAME ...] [--seeds 3] [--switches 4] [--json]

The paper benchmark asks Autopoiesis online to beat the best static policy in hindsight.
That is only possible where different stretches of a run want different policies. This
script measures how much they do: on the simulator's live system (the workload seeds
paper.py uses), it splits the run into ``--switches`` equal stretches and, stretch by
stretch, deploys the baseline that gives the lowest total execution time if it then served
to the end (knowing the whole trace: greedy, with hindsight). Switching pays what a live
deployment pays (a new planner re-plans and reloads weights). Keeping the same baseline is
always a choice, so the result is never worse than the best static baseline; the gap is
what adaptation between human-designed policies could win, seen from the future.
"""

from __future__ import annotations

import argparse
import json
import statistics

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
from autopoiesis.cli import positive_int

STATIONARY = "stationary"


def total_time(scenario: str, seed: int, schedule: list[tuple[float, str]]) -> float:
    """Serve one live run, deploying each (time, baseline label) of ``schedule`` in turn."""
    adapter = SimulatorAdapter(scenario)
    programs = adapter.baselines()
    default = programs["default"]
    adapter.start(seed=seed)
    try:
        for at, label in schedule:
            if at > 0:
                adapter.observe(at)
            adapter.deploy(programs[label], [default])
        adapter.observe(float("inf"))
        return adapter.live_metrics()["total_time"]
    finally:
        adapter.stop()


def _job(args):
    return total_time(*args)


def oracle(scenario: str, seed: int, switches: int, labels: list[str], pool) -> dict:
    """The greedy clairvoyant schedule and its total time, against the best static baseline."""
    last = max(r[0] for r in scenarios.load(scenario, seed).requests)
    times = [round(last * k / switches, 3) for k in range(switches)]
    schedule: list[tuple[float, str]] = []
    static = None
    for at in times:
        current = schedule[-1][1] if schedule else None
        # keeping the live baseline is no deployment (a redeploy would restart its state)
        tries = [schedule if label == current else schedule + [(at, label)] for label in labels]
        totals = pool.map(_job, [(scenario, seed, s) for s in tries])
        if static is None:
            static = dict(zip(labels, totals))
        best = min(range(len(labels)), key=lambda i: (totals[i], labels[i] != current))  # ties: keep
        schedule, oracle_total = tries[best], totals[best]
    best_static = min(static, key=static.get)
    return {"scenario": scenario, "seed": seed, "best_static": best_static,
            "best_static_total_time": static[best_static], "oracle_total_time": oracle_total,
            "gain": (static[best_static] - oracle_total) / static[best_static], "schedule": schedule}


def main() -> None:
    import multiprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every dynamic one)")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--switches", type=positive_int, default=4, help="stretches of the run, each may switch")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.scenario or [n for n in scenarios.names() if n != STATIONARY]
    try:
        labels = {n: list(SimulatorAdapter(n).baselines()) for n in names}
    except AdapterError as e:
        parser.error(str(e))
    rows = []
    with multiprocess.Pool(args.workers) as pool:
        for name in names:
            runs = [oracle(name, 1000 + i, args.switches, labels[name], pool) for i in range(args.seeds)]
            row = {"scenario": name, "gain": statistics.fmean(r["gain"] for r in runs),
                   "best_static_total_time": statistics.fmean(r["best_static_total_time"] for r in runs),
                   "oracle_total_time": statistics.fmean(r["oracle_total_time"] for r in runs), "runs": runs}
            rows.append(row)
            if not args.json:
                print(f"{name:20s} best static {row['best_static_total_time']:7.1f} s  switching oracle "
                      f"{row['oracle_total_time']:7.1f} s  gain {row['gain']:+.1%}", flush=True)
                for r in runs:
                    print(f"{'':20s} seed {r['seed']}: " + ", ".join(f"{label} at {at:.0f} s" for at, label in r["schedule"]))
    mean = statistics.fmean(r["gain"] for r in rows)
    if args.json:
        print(json.dumps({"scenarios": rows, "mean_gain": mean, "switches": args.switches}))
    else:
        print(f"mean gain of the switching oracle over the best static baseline: {mean:+.1%}")


if __name__ == "__main__":
    main()
