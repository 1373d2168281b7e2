"""How close the twin's picture of a live window's work is to what the window really held.

    python benchmarks/twin_fidelity.py [--scenario burst mixed ...] [--windows 240:300 420:480] [--json]

The simulator serves each scenario with ``default``, observed every 5 s as the controller
does, and cuts a window snapshot at each ``--windows`` span. A snapshot holds the requests
in flight when the window began and those that arrived in it; an output length is known
only for those that finished by its end. The decode work the twin will replay (output minus
what a resumed request had already generated) is compared with the truth, read after the
run is served to the end (the simulator knows every output). For comparison: a twin that
restarts part-answered requests and gives every unfinished one the mean output of the
window's finished arrivals (what it did before).
"""

from __future__ import annotations

import argparse
import json
import statistics

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter

DYNAMIC = ["burst", "diurnal", "length_shift", "mixed", "scale_in", "scale_out", "spot_loss", "trace_code",
           "trace_conversation"]
STEP_S = 5.0


def fidelity(scenario: str, windows: list[tuple[float, float]], seed: int) -> list[dict]:
    adapter = SimulatorAdapter(scenario)
    default = adapter.baselines()["default"]
    adapter.start(seed=seed)
    adapter.deploy(default, [default])
    live, sim, now, cuts = adapter.live, adapter.live.sim, 0.0, []
    for since, until in sorted(windows, key=lambda w: w[1]):
        while now < until:
            now = min(until, now + STEP_S)
            adapter.observe(now)
        requests = adapter.window_snapshot(since, until, default).params["requests"]
        started = live._generated_at(since)
        held = [r for r in sim.requests[: sim.next_arrival]
                if r.arrival < since and (r.finish is None or r.finish > since) or since <= r.arrival <= until]
        finished = [r.output for r in held if r.finish is not None and since <= r.arrival <= until]
        mean = statistics.fmean(finished) if finished else sim.workload_estimate.mean_output
        naive = sum(r.output if r.finish is not None else max(1, round(mean)) for r in held)
        cuts.append({"scenario": scenario, "since": since, "until": until, "requests": len(requests),
                     "resumed": sum(len(r) == 4 for r in requests), "unfinished": sum(r.finish is None for r in held),
                     "twin": sum(r[2] - (r[3] if len(r) == 4 else 0) for r in requests), "naive": naive,
                     "ids": [r.id for r in held], "started": started})
    adapter.observe(float("inf"))  # serve the rest: every output is now known
    for cut in cuts:
        true = sum(sim.requests[i].output - cut["started"].get(i, 0) for i in cut.pop("ids"))
        del cut["started"]
        cut.update(true=true, twin_error=(cut["twin"] - true) / max(1, true),
                   naive_error=(cut["naive"] - true) / max(1, true))
    return cuts


def span(text: str) -> tuple[float, float]:
    since, _, until = text.partition(":")
    try:
        window = float(since), float(until)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SINCE:UNTIL in seconds") from None
    if not 0 <= window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: SINCE must be >= 0 and before UNTIL")
    return window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="+", default=DYNAMIC + ["stationary"])
    parser.add_argument("--windows", type=span, nargs="+", default=[(120.0, 180.0), (240.0, 300.0), (420.0, 480.0)])
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for scenario in args.scenario:
        try:
            rows += fidelity(scenario, args.windows, args.seed)
        except AdapterError as e:
            parser.error(str(e))
    summary = {f"{stat}_{k}": f([abs(r[k]) for r in rows])
               for k in ("twin_error", "naive_error") for stat, f in (("median", statistics.median), ("max", max))}
    if args.json:
        print(json.dumps({"windows": rows, "abs_error": summary}))
        return
    print(f"{'scenario':20s} {'window':>9s} {'requests':>8s} {'resumed':>7s} {'unfinished':>10s} "
          f"{'true work':>10s} {'twin':>7s} {'naive':>7s}")
    for r in rows:
        print(f"{r['scenario']:20s} {r['since']:4.0f}-{r['until']:<4.0f} {r['requests']:8d} {r['resumed']:7d} "
              f"{r['unfinished']:10d} {r['true']:10d} {r['twin_error']:+7.1%} {r['naive_error']:+7.1%}")
    print(f"|error| of the decode work, median (max): twin {summary['median_twin_error']:.1%} "
          f"({summary['max_twin_error']:.1%}), naive {summary['median_naive_error']:.1%} ({summary['max_naive_error']:.1%})")


if __name__ == "__main__":
    main()
