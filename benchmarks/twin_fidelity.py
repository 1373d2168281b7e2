"""How far the twin's picture of a live window's decode work is from what the window held.

    python benchmarks/twin_fidelity.py [--scenario burst mixed ...] [--windows 240:300 420:480] [--json]

The simulator serves each scenario with ``default``, observed every 5 s as the controller
does, and cuts a window snapshot at each ``--windows`` span. A snapshot holds the requests
in flight when the window began and those that arrived in it; an output length is known
only for those that finished by its end, the rest get the window's mean. The replay
restarts every request, so tokens a request had generated before the window are decoded
again. The decode work the snapshot holds is compared with the truth, read after the run
is served to the end (the simulator knows every output): the work left at the window's
start. Two parts explain the error: ``restarted`` (tokens generated before the window,
counted again) and ``estimate`` (unfinished requests' guessed lengths against their true
ones; survivors are longer than the mean, so it is negative under load).
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


def generated(sim) -> dict[int, int]:
    """Tokens each unfinished request has generated so far (a running one's count lags its replica's)."""
    return {r.id: r.generated + (r.replica.counter - r.join_counter if r.alive else 0)
            for r in sim.requests[: sim.next_arrival] if r.finish is None}


def fidelity(scenario: str, windows: list[tuple[float, float]], seed: int) -> list[dict]:
    adapter = SimulatorAdapter(scenario)
    default = adapter.baselines()["default"]
    adapter.start(seed=seed)
    adapter.deploy(default, [default])
    sim, now, cuts = adapter.live.sim, 0.0, []
    for since, until in sorted(windows, key=lambda w: w[1]):
        started = {}
        while now < until:
            now = min(until, now + STEP_S, since if now < since else until)
            adapter.observe(now)
            if now == since:
                started = generated(sim)
        requests = adapter.window_snapshot(since, until, default).params["requests"]
        held = [r for r in sim.requests[: sim.next_arrival]
                if r.arrival < since and (r.finish is None or r.finish > since) or since <= r.arrival <= until]
        unfinished = [r for r in held if r.finish is None]
        cuts.append({"scenario": scenario, "since": since, "until": until, "requests": len(requests),
                     "part_answered": sum(started.get(r.id, 0) > 0 for r in held), "unfinished": len(unfinished),
                     "twin": sum(r[2] for r in requests), "restarted": sum(started.get(r.id, 0) for r in held),
                     "held": [r.id for r in held], "started": started})
    adapter.observe(float("inf"))  # serve the rest: every output is now known
    for cut in cuts:
        started, held = cut.pop("started"), cut.pop("held")
        true = max(1, sum(sim.requests[i].output - started.get(i, 0) for i in held))
        guessed = cut["twin"] - cut["restarted"] - true  # what is left once the restarted tokens are taken out
        cut.update(true=true, twin_error=(cut["twin"] - true) / true, restarted_share=cut["restarted"] / true,
                   estimate_error=guessed / true)
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
    ordered = sorted(args.windows, key=lambda w: w[1])
    if any(a[1] > b[0] for a, b in zip(ordered, ordered[1:])):
        parser.error("--windows must not overlap (each window's start is observed as the run goes)")
    rows = []
    for scenario in args.scenario:
        try:
            rows += fidelity(scenario, args.windows, args.seed)
        except AdapterError as e:
            parser.error(str(e))
    errors = [abs(r["twin_error"]) for r in rows]
    summary = {"median_abs_twin_error": statistics.median(errors), "max_abs_twin_error": max(errors)}
    if args.json:
        print(json.dumps({"windows": rows, **summary}))
        return
    print(f"{'scenario':20s} {'window':>9s} {'requests':>8s} {'part-answered':>13s} {'unfinished':>10s} "
          f"{'true work':>10s} {'twin':>7s} {'restarted':>9s} {'estimate':>8s}")
    for r in rows:
        print(f"{r['scenario']:20s} {r['since']:4.0f}-{r['until']:<4.0f} {r['requests']:8d} {r['part_answered']:13d} "
              f"{r['unfinished']:10d} {r['true']:10d} {r['twin_error']:+7.1%} {r['restarted_share']:+9.1%} "
              f"{r['estimate_error']:+8.1%}")
    print(f"|twin error| of the decode work: median {summary['median_abs_twin_error']:.1%}, "
          f"max {summary['max_abs_twin_error']:.1%}")


if __name__ == "__main__":
    main()
