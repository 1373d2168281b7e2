"""The single-server queue as a live system: the smallest adapter online evolution runs on.

``single_queue.py`` evolves the queue's priority rule offline. Here the queue also
*serves*, in simulated time, while its workload drifts: the first half of the run has
jobs of nearly one size (first come, first served is as good as any order there), the
second half heavy-tailed sizes (where running short jobs first pays). The online
controller serves it window by window with FCFS deployed, notices the drift, evolves a
priority on a replay of the last windows, deploys a champion that beats FCFS there, and
its guard watches the next live windows.

    autopoiesis evolve --adapter examples/live_queue.py --online
    autopoiesis evolve --adapter examples/live_queue.py --generations 4   # offline, on seeded workloads

What an adapter adds for ``--online`` (docs/adapters.md): ``start``, ``now``,
``observe``, ``deploy`` and ``window_snapshot``; ``evaluate`` then also replays a window.
"""

from __future__ import annotations

import math
import random

from autopoiesis import Adapter, Objective, Snapshot
from autopoiesis.hot_path import hot_path
from autopoiesis.metrics import Observation, RequestRecord
from single_queue import PRIORITY, Job  # beside this file: an adapter file's folder is on sys.path

PHASES = ((0.0, 600.0), (1.5, 600.0))  # (spread of log job sizes, seconds): all alike, then heavy-tailed


def make_jobs(seed: int, load: float) -> list[Job]:
    """Poisson arrivals at ``load`` jobs per second (mean size 1 s), sizes log-normal per phase."""
    rng, jobs, start = random.Random(seed), [], 0.0
    for sigma, seconds in PHASES:
        t = start
        while (t := t + rng.expovariate(load)) < start + seconds:
            jobs.append(Job(round(t, 6), rng.lognormvariate(-sigma * sigma / 2, sigma)))
        start += seconds
    return jobs


def serve(priority, jobs: list[Job], waiting: list[Job] = (), free_at: float = 0.0) -> list[tuple[Job, float, float]]:
    """Run ``jobs`` (and ``waiting``, queued already) to the end: [(job, start, finish)]."""
    served, waiting, now, i = [], list(waiting), free_at, 0
    while i < len(jobs) or waiting:
        if not waiting:
            now = max(now, jobs[i].arrival)
        while i < len(jobs) and jobs[i].arrival <= now:
            waiting.append(jobs[i])
            i += 1
        job = waiting.pop(min(range(len(waiting)), key=lambda k: priority(waiting[k], now)))
        served.append((job, now, now + job.size))
        now += job.size
    return served


class LiveQueue:
    """One server in simulated time, serving with whatever program is deployed."""

    def __init__(self, jobs: list[Job]):
        self.jobs, self.next = jobs, 0  # jobs[:next] have arrived
        self.waiting: list[Job] = []
        self.running: tuple[Job, float, float] | None = None  # (job, start, finish)
        self.done: list[tuple[Job, float, float]] = []
        self.clock, self.hot = 0.0, None

    def observe(self, until: float) -> Observation:
        records, first = [], self.next
        while True:
            arrival = self.jobs[self.next].arrival if self.next < len(self.jobs) else math.inf
            finish = self.running[2] if self.running else math.inf
            if min(arrival, finish) > until:
                break
            if finish <= arrival:
                self.clock, (job, start, end) = finish, self.running
                self.done.append(self.running)
                records.append(RequestRecord(job.arrival, start, end, prompt_tokens=round(1000 * job.size),
                                             output_tokens=1, request_id=len(self.done)))
                self.running = None
            else:
                self.clock = arrival
                self.waiting.append(self.jobs[self.next])
                self.next += 1
            if self.running is None and self.waiting:  # the deployed program decides, on its hot path
                pick = min(range(len(self.waiting)), key=lambda k: self.hot.priority(self.waiting[k], self.clock))
                job = self.waiting.pop(pick)
                self.running = (job, self.clock, self.clock + job.size)
        finished = self.next == len(self.jobs) and self.running is None and not self.waiting
        self.clock = self.clock if finished else max(self.clock, until)
        calls, fallbacks, stalls = self.hot.take_counts()
        in_flight = [j.arrival for j in self.waiting] + ([self.running[0].arrival] if self.running else [])
        return Observation(now=self.clock, records=records, arrivals=self.next - first,
                           arrival_prompts=[round(1000 * j.size) for j in self.jobs[first:self.next]],
                           calls=calls, fallbacks=fallbacks, stalls=stalls, finished=finished, in_flight=in_flight)


class LiveQueueAdapter(Adapter):
    """The queue's priority rule, evolved offline on seeded workloads or online while it serves."""

    name = "live_queue"
    objectives = (Objective("mean_e2e", "min"),)
    metrics = ("mean_e2e", "max_e2e", "jobs")
    guard_metric = "mean_e2e_open"  # a live window's latency, counting the jobs still waiting at its end
    wall_clock = False  # now() is simulated: only observe() moves it

    def __init__(self, load: float = 0.9):
        self.load, self.live = float(load), None

    def slots(self):
        return [PRIORITY]

    # -- offline: a seeded workload, served whole -----------------------------------------
    def snapshot(self, seed: int) -> Snapshot:
        return Snapshot(self.name, {"seed": seed, "load": self.load}, label=f"seed {seed}")

    def evaluate(self, policy, snapshot):
        p = snapshot.params
        if "window" in p:  # a live window, replayed from the queue it started with
            served = serve(policy.priority, [Job(*j) for j in p["arrivals"]], [Job(*j) for j in p["waiting"]],
                           p["free_at"])
        else:
            served = serve(policy.priority, make_jobs(p["seed"], p["load"]))
        latencies = [finish - job.arrival for job, _, finish in served]
        return {"mean_e2e": math.fsum(latencies) / len(latencies), "max_e2e": max(latencies),
                "jobs": float(len(served))}

    # -- online: the live system and its twin ---------------------------------------------
    def start(self, seed: int = 1000) -> None:
        self.live = LiveQueue(make_jobs(seed, self.load))

    def stop(self) -> None:
        if self.live is not None and self.live.hot is not None:
            self.live.hot.close()  # with --isolate: its decision processes

    def now(self) -> float:
        return self.live.clock

    def observe(self, until: float) -> Observation:
        return self.live.observe(until)

    def deploy(self, program, fallbacks=()) -> None:
        """Hot-swap: the next decision is the new program's; any failing call falls back."""
        checks = {"priority": lambda r, args: math.isfinite(r)}
        previous, self.live.hot = self.live.hot, hot_path(program, list(fallbacks), self.slots(), checks,
                                                          isolate=self.isolate_policies)  # --isolate
        self.live.hot.carry_counts(previous)
        if previous is not None:
            previous.close()

    def window_snapshot(self, since: float, until: float, incumbent) -> Snapshot:
        """What [since, until] held: the jobs queued at ``since``, when the server was next
        free, and the jobs that arrived. Sizes are known on arrival, so the twin is exact."""
        live = self.live
        started = live.done + ([live.running] if live.running else [])
        queued = [job for job, start, _ in started if job.arrival < since <= start]
        queued += [job for job in live.waiting if job.arrival < since]
        busy = [end for _, start, end in started if start < since < end]
        arrivals = [job for job in live.jobs[:live.next] if since <= job.arrival <= until]
        return Snapshot(self.name, {"window": [since, until], "free_at": busy[0] if busy else since,
                                    "waiting": sorted(map(list, queued)), "arrivals": [list(j) for j in arrivals]},
                        label=f"live {since:.0f}-{until:.0f} s")

    def __getstate__(self):  # worker processes need the twin, not the live system
        return {**self.__dict__, "live": None}
