"""Evolve the priority rule of a single-server queue: a complete custom adapter.

Jobs with random sizes arrive at one server; whenever it frees up, it runs the
waiting job with the *lowest* ``priority(job, now)``. Fitness is the mean completion
time (finish - arrival) of a seeded batch of jobs. The seed program is FCFS;
shortest-job-first is the known good answer, and evolution has to find it (or
something as good) with the offline operators alone.

    python examples/single_queue.py --seed 0
    autopoiesis evolve --adapter examples/single_queue.py --generations 10
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from typing import NamedTuple

from autopoiesis import Adapter, Archive, Config, Evolution, Objective, PolicySlot, Primitives, Snapshot
from autopoiesis.sandbox import compile_policy

FCFS = '''
def priority(job, now):
    """First come, first served: the earliest arrival runs first."""
    return job.arrival
'''

SJF = '''
def priority(job, now):
    """Shortest job first."""
    return job.size
'''


class Job(NamedTuple):
    """Immutable, so a policy cannot cheat by rewriting the job it is shown."""

    arrival: float
    size: float


PRIORITY = PolicySlot(
    name="priority",
    params=("job", "now"),
    doc=(
        "Called whenever the server frees up, once per waiting job. Return a number; "
        "the job with the lowest number runs next, to completion. job.arrival is when "
        "it arrived, job.size how long it will run (known exactly), now the current time."
    ),
    baselines={"fcfs": FCFS},
    returns=float,
    examples=((Job(0.0, 1.0), 0.0), (Job(3.5, 0.2), 7.0), (Job(1.0, 40.0), 100.0)),
    primitives=Primitives(features={"arrival": "job.arrival", "size": "job.size", "now": "now"}),
)


def make_jobs(seed: int, count: int, load: float) -> list[Job]:
    """Poisson arrivals; log-normal sizes with mean 1 (heavy-ish tail, where order matters)."""
    rng = random.Random(seed)
    sigma = 1.0
    mu = -sigma * sigma / 2  # mean size 1.0
    t, jobs = 0.0, []
    for _ in range(count):
        t += rng.expovariate(load)
        jobs.append(Job(t, rng.lognormvariate(mu, sigma)))
    return jobs


def mean_completion_time(priority, jobs: list[Job]) -> tuple[float, float]:
    """Non-preemptive single server; returns (mean, max) of finish - arrival."""
    now, i, waiting, flow = 0.0, 0, [], []
    while i < len(jobs) or waiting:
        if not waiting and jobs[i].arrival > now:
            now = jobs[i].arrival
        while i < len(jobs) and jobs[i].arrival <= now:
            waiting.append(jobs[i])
            i += 1
        best = min(range(len(waiting)), key=lambda k: priority(waiting[k], now))
        job = waiting.pop(best)
        now += job.size
        flow.append(now - job.arrival)
    return math.fsum(flow) / len(flow), max(flow)


class SingleQueueAdapter(Adapter):
    """One server, one queue: evolve the order in which waiting jobs run."""

    name = "single_queue"
    objectives = (Objective("mean_completion_time", "min"), Objective("max_completion_time", "min"))

    def __init__(self, jobs: int = 300, load: float = 0.9):
        self.jobs, self.load = int(jobs), float(load)

    def slots(self):
        return [PRIORITY]

    def snapshot(self, seed: int) -> Snapshot:
        return Snapshot(self.name, {"seed": seed, "jobs": self.jobs, "load": self.load}, label=f"seed {seed}")

    def evaluate(self, policy, snapshot):
        jobs = make_jobs(snapshot.params["seed"], snapshot.params["jobs"], snapshot.params["load"])
        mean, worst = mean_completion_time(policy.priority, jobs)
        return {"mean_completion_time": mean, "max_completion_time": worst}


def held_out_score(adapter: SingleQueueAdapter, source: str, seeds: range) -> float:
    policy = compile_policy(source, adapter.slots())
    scores = [adapter.evaluate(policy, adapter.snapshot(s))["mean_completion_time"] for s in seeds]
    return math.fsum(scores) / len(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    adapter = SingleQueueAdapter()
    config = Config(population=args.population, generations=args.generations, seed=args.seed,
                    workers=args.workers, held_out_snapshots=0)
    result = Evolution(adapter, config, Archive(), adapter_spec=__file__).run()

    held_out = range(10_000 + 100 * args.seed, 10_000 + 100 * args.seed + 20)
    print(json.dumps({
        "champion": round(held_out_score(adapter, result.champion.source, held_out), 4),
        "fcfs": round(held_out_score(adapter, FCFS, held_out), 4),
        "sjf": round(held_out_score(adapter, SJF, held_out), 4),
        "evaluations": result.programs,
    }))
    print(result.champion.source, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
