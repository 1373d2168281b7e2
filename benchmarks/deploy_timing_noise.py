"""How much total execution time moves when the same policy goes live a few seconds later.

    python benchmarks/deploy_timing_noise.py [--scenario scale_out] [--program reschedule:on_change]
                                             [--at 200 201 202 203 205 210] [--json]

The simulator's live system serves ``default`` and swaps in ``--program`` at each time in
``--at`` (the same program, the same workload seed, nothing evolved), then prints the
whole run's total time. The spread is the noise floor under any single-seed comparison of
online runs: an evolution that takes a second longer deploys a second later, and the last
requests land on other replicas. Read paper.py's per-scenario differences against it.
"""

from __future__ import annotations

import argparse
import json
import statistics

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter


def total_time(scenario: str, program: str, at: float, seed: int) -> float:
    adapter = SimulatorAdapter(scenario)
    baselines = adapter.baselines()
    default = baselines["default"]
    adapter.start(seed=seed)
    adapter.deploy(default, [default])
    adapter.observe(at)
    adapter.deploy(baselines[program], [default])
    adapter.observe(float("inf"))
    return adapter.live_metrics()["total_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scale_out")
    parser.add_argument("--program", default="reschedule:on_change", help="a baseline label (simulate --list)")
    parser.add_argument("--at", type=float, nargs="+", default=[200, 201, 202, 203, 205, 210])
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        labels = SimulatorAdapter(args.scenario).baselines()
    except AdapterError as e:
        parser.error(str(e))
    if args.program not in labels:
        parser.error(f"unknown baseline {args.program!r}; one of: {', '.join(labels)}")
    times = {at: total_time(args.scenario, args.program, at, args.seed) for at in args.at}
    spread = (max(times.values()) - min(times.values())) / statistics.fmean(times.values())
    if args.json:
        print(json.dumps({"scenario": args.scenario, "program": args.program, "total_time": times, "spread": spread}))
        return
    for at, t in times.items():
        print(f"{args.program} live at {at:6.1f} s: total time {t:7.1f} s")
    print(f"spread {spread:.1%} of the mean")


if __name__ == "__main__":
    main()
