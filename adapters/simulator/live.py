"""The simulator as a live system, and the twin that replays its windows.

``LiveSimulation`` serves a scenario in simulated time, window by window, with the
deployed policy behind a ``HotPath``. ``window_snapshot`` cuts what the last windows
saw (the requests, the GPUs online, the plan in place, the observed workload) into a
``Snapshot``; ``replay`` runs a candidate on it, starting from the live plan already
loaded, so a candidate that plans differently pays for its reconfiguration, and with the
backlog on the replicas it is queued on, so one that routes differently routes only what
arrives after. The cluster is shown as the live system knows it: events the live plan
ignored (a join under ``never``) are put to the candidate at the start, as a deployment
would, and departures a spot notice announced happen at their time.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from autopoiesis.metrics import EngineSample, Observation
from autopoiesis.hot_path import hot_path
from autopoiesis.program import slot_code_id

from . import scenario as scenarios
from .engine import CLUSTER


@functools.lru_cache(maxsize=8)
def _base(name: str, digest: str):
    """The scenario's fixed parts (cluster tables, SLO, engine settings) without its workload."""
    return scenarios.load(name, 0, 1)


def plan_code(source: str) -> str:
    return slot_code_id(source, "schedule")


def order_code(source: str) -> str:
    return slot_code_id(source, "priority")


class LiveSimulation:
    """One scenario served live in simulated time; ``deploy`` hot-swaps the policy."""

    def __init__(self, scenario: str, seed: int, requests: int | None, slots):
        from . import build

        self.scenario_name, self.slots = scenario, slots
        self.scenario = scenarios.load(scenario, seed, requests)
        self.sim = build(self.scenario, None, scenario)
        self.started = False
        self.hot = None
        self.code = ""
        self.order = ""
        self._arrived = 0
        self._events_seen = 0
        self._oldest = 0  # every request before this index has finished
        self.program_id = ""
        # (program id, its plan, events it left unanswered, how many cluster events had come by then)
        self.swapped_out: tuple[str, list, list, int] | None = None

    # -- serving --------------------------------------------------------------------------
    def now(self) -> float:
        return self.sim.now if self.started else 0.0

    def deploy(self, program, fallbacks) -> None:
        checks = {"dispatch": lambda r, args: 0 <= r < len(args[1]),
                  "schedule": lambda r, args: bool(self.sim.check_plan(r)),
                  "reschedule": lambda r, args: r is None or isinstance(r, bool) or bool(self.sim.check_plan(r))}
        previous = self.hot
        if previous is not None:  # what the outgoing policy leaves: the guard's counterfactual starts here
            self.swapped_out = (self.program_id, self._plan(), [[e.kind, list(e.gpus)] for e in self.sim.unanswered],
                                len(self.sim.cluster_log))
        self.program_id = program.id
        self.hot = hot_path(program, fallbacks, self.slots, checks)
        self.hot.carry_counts(previous)
        code, self.code = self.code, plan_code(program.source)
        order, self.order = self.order, order_code(program.source)
        if not self.started:
            self.sim.policy = self.hot
            self.sim.start()
            self.started = True
        else:
            self.sim.deploy(self.hot, replan=code != self.code, reorder=order != self.order)

    def observe(self, until: float) -> Observation:
        sim = self.sim
        records = sim.advance(until) if not sim.finished else []
        prompts = [r.prompt for r in sim.requests[self._arrived:sim.next_arrival]]
        arrived, self._arrived = sim.next_arrival - self._arrived, sim.next_arrival
        log = sim.cluster_log[self._events_seen:]
        self._events_seen = len(sim.cluster_log)
        calls, fallbacks, stalls = self.hot.take_counts()
        samples = [EngineSample(sim.now, r.index, r.running + len(r.prefilling), len(r.waiting),
                                r.kv_used / max(1, r.capacity)) for r in sim.active]
        return Observation(now=sim.now, records=records, samples=samples,
                           events=[(e.time, e.kind, f"{len(e.gpus)} GPU(s)") for e in log],
                           arrivals=arrived, arrival_prompts=prompts, calls=calls, fallbacks=fallbacks,
                           stalls=stalls, finished=sim.finished,
                           in_flight=self._in_flight())

    def _in_flight(self) -> list[float]:
        requests, end = self.sim.requests, self.sim.next_arrival
        while self._oldest < end and requests[self._oldest].finish is not None:
            self._oldest += 1
        return [r.arrival for r in requests[self._oldest:end] if r.finish is None]

    def metrics(self) -> dict[str, float]:
        from . import metrics_of

        return metrics_of(self.scenario, self.sim.result())

    # -- the twin's input -----------------------------------------------------------------
    def _plan(self) -> list:
        return sorted((list(r.spec.gpus), r.spec.tp, r.spec.pp) for r in self.sim.active)

    def window_snapshot(self, since: float, until: float, incumbent, horizon_s: float = 0.0) -> dict:
        """What happened in [since, until]: the twin replays it from ``incumbent``'s plan.

        That is the live plan, unless ``incumbent`` was swapped out by the last deployment (the
        guard asking whether it would have done better): then the plan it left, and the events it
        left unanswered, so a re-planning newcomer pays again for the change it made live. GPUs
        that joined or left since the swap are the incumbent's to answer too: its replicas on a
        GPU that left are gone (as they went live), and those events join the unanswered ones.

        ``horizon_s``: how long the winner is expected to serve; the window's arrivals repeat
        until the replay covers it (the workload assumed to go on as observed), so a change of
        plan is weighed against its payoff over that time, not over one short window.
        """
        sim = self.sim
        finished = [r for r in sim.requests if r.finish is not None and since <= r.arrival <= until]
        known_output = sum(r.output for r in finished) / len(finished) if finished else sim.workload_estimate.mean_output
        backlog, observed = [], []
        for r in sim.requests[: sim.next_arrival]:
            # output lengths are known once a request finished; the rest get the window's mean
            output = r.output if r.finish is not None and r.finish <= until else max(1, round(known_output))
            if r.arrival < since and (r.finish is None or r.finish > since):
                on = r.replica if r.replica is not None and not r.replica.removed else None  # in the plan replayed
                on = [list(on.spec.gpus), on.spec.tp, on.spec.pp] if on is not None else None
                backlog.append((r.first_token is None or r.first_token > since, r.epoch, r.key, r.seq, r.prompt, output, on))
            elif since <= r.arrival <= until:
                observed.append((round(r.arrival - since, 6), r.prompt, output))
        # The backlog arrives at 0 s in the order it had live (those decoding first): where a
        # candidate's keys tie, as FCFS's all do at 0 s, its replay keeps that order. Queuing it
        # ahead in that order, as a live deployment does, cost tail latency (docs/online_measured.md).
        # Each stays on the replica it is on live: a deployed dispatch routes only later arrivals.
        backlog.sort(key=lambda b: b[:4])
        span = until - since
        repeats = math.ceil(horizon_s / span) - 1 if span > 0 and observed else 0
        arrivals = sorted(observed + [(round(a + k * span, 6), p, o) for k in range(1, repeats + 1) for a, p, o in observed])
        requests = [(0.0, prompt, output) for *_, prompt, output, _ in backlog] + arrivals
        plan, unanswered = self._plan(), [[e.kind, list(e.gpus)] for e in sim.unanswered]
        if self.swapped_out is not None and incumbent.id == self.swapped_out[0] != self.program_id:
            plan, unanswered = self._swapped_out_now()
        view = sim._window(until)
        noticed = {g for e in sim.cluster_log if e.kind == "notice" for g in e.gpus}
        announced = sorted([round(t - since, 6), payload[0], list(payload[1])] for t, _, kind, payload, _ in sim.events
                           if kind == CLUSTER and payload[0] == "leave" and set(payload[1]) <= noticed)
        return {
            "kind": "window", "scenario": self.scenario_name, "digest": self.scenario.digest,
            "since": since, "until": until, "requests": requests, "backlog": len(backlog),
            "queued_on": [b[-1] for b in backlog],
            "gpus": sorted([gid, gpu.name] for gid, gpu in sim.online.items()),
            "plan": plan, "workload": list(view.workload),
            "window": {k: getattr(view, k) for k in view.__slots__ if k != "workload"}, "plan_code": plan_code(incumbent.source),
            "unanswered": unanswered, "announced": announced,
        }

    def _swapped_out_now(self) -> tuple[list, list]:
        """The swapped-out program's plan and unanswered events, with the cluster's changes since
        the swap applied (``window_snapshot``)."""
        _, plan, unanswered, seen = self.swapped_out
        since = self.sim.cluster_log[seen:]
        plan = [entry for entry in plan if all(g in self.sim.online for g in entry[0])]
        return plan, [*unanswered, *([e.kind, _gpu_ids(e)] for e in since)]


def _gpu_ids(event) -> list[int]:
    """A cluster event's GPU ids (a join logs (id, type) pairs)."""
    return [g[0] if isinstance(g, tuple) else g for g in event.gpus]


def replay(policy, params: dict):
    """Counterfactual replay of a live window: ``policy`` serving it from the live plan."""
    from . import metrics_of

    scenario, sim = twin(policy, params)
    return metrics_of(scenario, sim.run())


def twin(policy, params: dict):
    """(scenario, simulation) that replays the window ``params`` describes with ``policy``."""
    from . import build

    base = _base(params["scenario"], params["digest"])
    replans = plan_code(getattr(policy, "source", "")) != params["plan_code"]
    sc = dataclasses.replace(
        base, requests=[tuple(r) for r in params["requests"]], initial_gpus=[tuple(g) for g in params["gpus"]],
        cluster_events=[(t, kind, tuple(ids)) for t, kind, ids in params.get("announced", [])],
        workload_estimate=tuple(params["workload"]),
        initial_plan=[(tuple(ids), tp, pp) for ids, tp, pp in params["plan"]], replan_at_start=replans,
        unanswered_events=tuple((kind, tuple(ids)) for kind, ids in params.get("unanswered", [])),
        initial_window=params.get("window"),
        queued_on=tuple(None if on is None else (tuple(on[0]), on[1], on[2]) for on in params.get("queued_on", ())))
    return sc, build(sc, policy, params["scenario"])
