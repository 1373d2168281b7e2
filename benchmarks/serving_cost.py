"""Where the live engine's serving thread spends its time when the evolution plane runs.

    python benchmarks/serving_cost.py [--scenario burst] [--load-factor 0.5] [--duration 40] [--window 5]
                                      [--seeds 2] [--workers 1] [-o hidden=64 ...] [--json]

For each seed the engine serves the same load twice: ``fcfs`` static, then ``fcfs`` under
the online controller with a margin no champion meets (it evolves and never deploys). Per
arm it reports the mean end-to-end latency and how the serving thread's time divides:

- the **step level**, the steps' measured time over what the twin's cost model (timed at
  start) predicts for the same shapes, split by whether an evolution was in flight: the
  evaluation workers and the plane's thread slowing the engine's steps would show as a
  higher level while evolving;
- the time the thread spent **outside** ``observe`` (the controller's window bookkeeping
  and the adapter's ``window_metrics``), when the engine serves nothing, and within it the
  time in ``window_metrics`` (the longest call too).

Steps are told apart by the ``observe`` call they ran in: while an evolution is in flight
the controller observes in ``--poll`` slices, so a slice that begins with one in flight
is counted as evolving.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters.base import AdapterError, load_adapter
from autopoiesis.adapters import engine as engine_adapter
from autopoiesis.adapters.engine import EngineAdapter
from autopoiesis.archive import Archive
from autopoiesis.cli import UserError, parse_options, positive_float, positive_int
from autopoiesis.evolution import Config
from autopoiesis.metrics import RollingWindow
from autopoiesis.online import Controller, OnlineConfig


class _Tally(deque):
    """The live steps the adapter keeps (its last ``STEPS_KEPT``), and every one of them for the count."""

    def __init__(self, maxlen: int):
        super().__init__(maxlen=maxlen)
        self.all: list = []

    def append(self, step) -> None:
        super().append(step)
        self.all.append(step)


class Timed:
    """Times an engine adapter's ``observe`` and ``window_metrics`` calls and the steps in each."""

    def __init__(self, adapter: EngineAdapter):
        self.adapter, self.controller = adapter, None
        self.calls: list[dict] = []  # one per observe: start, end, evolving, steps' seconds and prediction
        self.reports: list[float] = []  # seconds per window_metrics call
        self.tally: _Tally | None = None
        self.seen = 0

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def __reduce_ex__(self, protocol):  # evaluation workers get the adapter itself (its twin)
        return self.adapter.__reduce_ex__(protocol)

    def start(self, seed: int = 1000) -> None:
        self.adapter.start(seed)
        self.tally = self.adapter.live["steps"] = _Tally(engine_adapter.STEPS_KEPT)  # the usual count kept
        self.seen = 0

    def observe(self, until: float):
        job = self.controller.job if self.controller else None
        evolving = job is not None and not job.done
        started = time.perf_counter()
        observation = self.adapter.observe(until)
        ended = time.perf_counter()
        steps = self.adapter.live["steps"].all
        self.calls.append({"start": started, "end": ended, "evolving": evolving, "steps": (self.seen, len(steps))})
        self.seen = len(steps)  # what they cost is counted after the run, not on the serving thread
        return observation

    def window_metrics(self, since, until, incumbent):
        started = time.perf_counter()
        try:
            return self.adapter.window_metrics(since, until, incumbent)
        finally:
            self.reports.append(time.perf_counter() - started)


def serve(timed: Timed, seed: int, window_s: float, workers: int, evolve: bool) -> dict:
    """One arm: fcfs static, or fcfs under a controller that evolves and never deploys."""
    timed.calls, timed.reports, timed.controller = [], [], None
    started = time.perf_counter()
    summary = {}
    if evolve:
        timed.controller = Controller(timed, OnlineConfig(window_s=window_s, live_seed=seed, margin=1e9),
                                      Config(population=8, generations=3, workers=workers, held_out_snapshots=0,
                                             seed=seed), archive=Archive())
        summary = timed.controller.run()
        live = summary["live"]
    else:
        timed.start(seed)
        try:
            timed.deploy(timed.baselines()["fcfs"])
            while not timed.observe(timed.now() + window_s).finished:
                pass
            window = RollingWindow()
            for record in timed.live["records"]:
                window.add(record)
            live = window.summary(timed.slo)
        finally:
            timed.stop()
    wall = time.perf_counter() - started
    calls = timed.calls
    outside = sum(b["start"] - a["end"] for a, b in zip(calls, calls[1:]))
    inside = sum(c["end"] - c["start"] for c in calls)

    costs, steps = timed.fitted_costs(), timed.tally.all
    for c in calls:
        mine = steps[slice(*c["steps"])]
        c.update(count=len(mine), seconds=sum(s for _, s in mine), predicted=sum(costs.step_of(x) for x, _ in mine))

    def level(evolving: bool) -> float | None:
        chosen = [c for c in calls if c["evolving"] == evolving]
        predicted = sum(c["predicted"] for c in chosen)
        return sum(c["seconds"] for c in chosen) / predicted if predicted > 0 else None

    return {
        "mean_e2e": live["mean_e2e"], "wall_s": wall, "observe_s": inside, "outside_observe_s": outside,
        "window_metrics_s": sum(timed.reports), "window_metrics_max_s": max(timed.reports, default=0.0),
        "steps_s": sum(c["seconds"] for c in calls), "steps": sum(c["count"] for c in calls),
        "level_idle": level(False), "level_evolving": level(True),
        "evolving_s": sum(c["end"] - c["start"] for c in calls if c["evolving"]),
        "evolutions": summary.get("evolutions", 0),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="burst")
    parser.add_argument("--load-factor", type=positive_float, default=0.5,
                        help="the mean rate as a multiple of the twin's capacity (engine_online.py)")
    parser.add_argument("--duration", type=positive_float, default=40.0)
    parser.add_argument("--window", type=positive_float, default=5.0, help="online window (s)")
    parser.add_argument("--seeds", type=positive_int, default=2, help="live loads (seeds 1000, 1001, ...)")
    parser.add_argument("--workers", type=positive_int, default=1)
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine option, as for the CLI (device=cuda, hidden=2048, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        options = {"hidden": 64, "layers": 2, "heads": 2, **parse_options(args.option),
                   "scenario": args.scenario, "duration": args.duration}
        adapter = load_adapter("engine", options)
        adapter.fitted_costs()
    except (AdapterError, UserError) as e:
        parser.error(str(e))
    adapter.rate = args.load_factor * adapter.capacity()
    console.print(f"engine on {adapter.device} ({', '.join(f'{k} {v}' for k, v in adapter.model_shape.items())}), "
                  f"{args.scenario} at {adapter.rate:.2f} req/s for {args.duration:.0f} s", highlight=False)
    timed = Timed(adapter)
    runs: list[dict] = []
    for seed in range(1000, 1000 + args.seeds):
        for arm, evolve in (("fcfs", False), ("fcfs, evolving", True)):
            adapter.run_dir = f"runs/serving-cost-{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{int(evolve)}"
            row = {"seed": seed, "arm": arm, **serve(timed, seed, args.window, args.workers, evolve)}
            runs.append(row)
            console.print(f"seed {seed} {arm}: mean e2e {row['mean_e2e']:.3f} s, step level "
                          f"{row['level_idle']:.2f} idle / "
                          + (f"{row['level_evolving']:.2f}" if row["level_evolving"] else "-")
                          + f" evolving, {row['outside_observe_s']:.2f} s outside observe", highlight=False)
    if args.json:
        print(json.dumps({"scenario": args.scenario, "rate": adapter.rate, "device": adapter.device,
                          "model": adapter.model_shape, "runs": runs}))
        return 0
    table = Table(title=f"engine on {adapter.device}, {args.scenario} at {adapter.rate:.3g} req/s, "
                        f"{args.duration:.0f} s, {args.window:g} s windows")
    for col in ("seed", "arm", "mean e2e (s)", "step level idle", "step level evolving", "evolving (s)",
                "outside observe (s)", "window_metrics (s, max)", "evolutions"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in runs:
        table.add_row(str(r["seed"]), r["arm"], f"{r['mean_e2e']:.3f}", f"{r['level_idle']:.2f}",
                      f"{r['level_evolving']:.2f}" if r["level_evolving"] else "-", f"{r['evolving_s']:.1f}",
                      f"{r['outside_observe_s']:.2f} ({r['outside_observe_s'] / r['wall_s']:.1%})",
                      f"{r['window_metrics_s']:.2f} ({r['window_metrics_max_s']:.2f})", str(r["evolutions"]))
    Console().print(table)
    for arm in ("fcfs", "fcfs, evolving"):
        mine = [r for r in runs if r["arm"] == arm]
        print(f"{arm}: mean e2e {statistics.fmean(r['mean_e2e'] for r in mine):.3f} s over {len(mine)} seed(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
