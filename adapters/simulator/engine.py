"""The discrete-event simulation of an LLM-serving cluster.

Per replica, continuous batching as vLLM does it: each step decodes one token for
every running request and spends the rest of a token budget on prompt chunks
(chunked prefill); a request is admitted when its prompt's KV fits; when decode
growth fills the cache, the lowest-priority running request is preempted and later
recomputed. Events grow with requests, not tokens: while a replica's batch is
unchanged, its decode steps are advanced in closed form (step time is affine in the
batch's total context, so k steps cost k*A + b*(k*C + B*k*(k-1)/2)), and a run is
cut short at the step boundary where something changes (a completion, a full cache,
an admissible arrival).

Policies are called through their slots: ``schedule`` (the plan; each cost-model
estimate costs simulated time), ``reschedule`` (periodically and on cluster events),
``dispatch`` (a score per replica, lowest wins) and ``priority`` (a key per request,
lowest runs first, computed when it joins a replica's queue).
"""

from __future__ import annotations

import heapq
import math
from collections import namedtuple
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable

from autopoiesis.metrics import RequestRecord
from autopoiesis.program import PolicyError

from .costmodel import Calibration, ReplicaCost
from .hardware import GPU, Model

RequestInfo = namedtuple("RequestInfo", "id arrival prompt_tokens generated")
GPUInfo = namedtuple("GPUInfo", "id type memory_gb tflops hbm_gbps price_per_hour")
ReplicaSpec = namedtuple("ReplicaSpec", "gpus tp pp")
Workload = namedtuple("Workload", "rate mean_prompt mean_output p90_prompt")
ClusterEvent = namedtuple("ClusterEvent", "time kind gpus")


class Request:
    __slots__ = ("id", "arrival", "prompt", "output", "info", "epoch", "key", "seq", "replica", "target", "prefilled",
                 "generated", "join_counter", "done_counter", "first_token", "finish", "preemptions", "alive")

    def __init__(self, rid: int, arrival: float, prompt: int, output: int):
        self.id, self.arrival, self.prompt, self.output = rid, arrival, prompt, output
        self.replica = None
        self.target = prompt  # tokens to (re)compute before decoding
        self.prefilled = 0
        self.generated = 0
        self.join_counter = 0
        self.done_counter = 0
        self.first_token = None
        self.finish = None
        self.preemptions = 0
        self.alive = False  # in a replica's running set
        self.epoch = 0  # deployments before it was queued
        self.key = 0.0
        self.seq = rid
        self.info = RequestInfo(rid, arrival, prompt, 0)


class Replica:
    """One replica's batching state."""

    def __init__(self, index: int, spec: ReplicaSpec, gpu: GPU, cost: ReplicaCost, ready_at: float,
                 budget: int, max_seqs: int):
        self.index, self.spec, self.gpu, self.cost = index, spec, gpu, cost
        self.capacity = cost.kv_capacity_tokens
        self.ready_at = ready_at
        self.budget, self.max_seqs = budget, max_seqs
        self.waiting: list = []  # heap of (epoch, key, seq, request)
        self.prefilling: list[Request] = []
        self.finishing: list = []  # heap of (done_counter, seq, request)
        self.running = 0
        self.counter = 0
        self.context = 0  # sum of prompt + generated over running requests
        self.reserved = 0  # KV reserved for prefilling requests
        self.version = 0  # invalidates scheduled events
        self.busy = False
        self.removed = False
        self.assigned = 0
        self.loading = True
        # the segment in flight
        self.seg_start = 0.0
        self.seg_steps = 0
        self.seg_chunks: list[tuple[Request, int]] = []
        self.seg_a = self.seg_b = 0.0
        self.seg_batch = 0
        a, b = cost.decode_coefficients(32)
        self.speed = 32.0 / (a + b * 32 * 1024)  # decode tokens/s at a nominal batch (for dispatch)

    @property
    def kv_used(self) -> int:
        return self.context + self.reserved

    def outstanding(self) -> int:
        return len(self.waiting) + len(self.prefilling) + self.running


class ReplicaView:
    """What ``dispatch`` sees of a replica: read-only, live.

    Dispatch reads these once per replica per request, the simulator's hottest path: plain
    fields are ``attrgetter`` properties (no Python frame per read).
    """

    __slots__ = ("_r",)

    def __init__(self, replica: Replica):
        self._r = replica

    index = property(attrgetter("_r.index"))
    gpu = property(attrgetter("_r.gpu.name"))
    tp = property(attrgetter("_r.spec.tp"))
    pp = property(attrgetter("_r.spec.pp"))
    waiting = property(lambda self: len(self._r.waiting))
    running = property(lambda self: self._r.running + len(self._r.prefilling))
    outstanding = property(lambda self: len(self._r.waiting) + len(self._r.prefilling) + self._r.running)
    assigned = property(attrgetter("_r.assigned"))
    kv_used_fraction = property(lambda self: self._r.kv_used / max(1, self._r.capacity))
    capacity_tokens = property(attrgetter("_r.capacity"))
    speed = property(attrgetter("_r.speed"))
    ready = property(lambda self: not self._r.loading)


@dataclass
class Overheads:
    scheduling_s: float = 0.0  # simulated time the schedule/reschedule policies spent estimating
    reconfiguration_s: float = 0.0  # GPU-seconds of weight loading
    reconfigurations: int = 0
    recomputed_tokens: int = 0  # prompt+generated tokens computed again after preemption or migration


@dataclass
class Result:
    records: list[RequestRecord]
    overheads: Overheads
    gpu_seconds: float
    cost_usd: float
    end: float
    plans: list[tuple[float, tuple]] = field(default_factory=list)


class CostModelView:
    """What ``schedule`` and ``reschedule`` may ask; every estimate costs simulated time."""

    __slots__ = ("_sim", "_spent")

    def __init__(self, sim: "Simulation"):
        self._sim = sim
        self._spent = 0.0

    def fits(self, gpu_type: str, tp: int, pp: int = 1) -> bool:
        """Free: does the model fit on tp * pp GPUs of this type?"""
        tp, pp = int(tp), int(pp)
        if gpu_type not in self._sim.gpu_table:
            raise PolicyError(f"cost_model.fits: unknown GPU type {gpu_type!r}")
        if not (1 <= tp <= 64 and 1 <= pp <= 64):
            return False
        return self._sim.replica_cost(gpu_type, tp, pp).fits()

    def estimate(self, plan, workload=None) -> dict:
        """Estimated capacity and latency of a plan under a workload (costs ``estimate_cost_s``)."""
        self._spent += self._sim.estimate_cost_s
        workload = workload or self._sim.workload_estimate
        specs = self._sim.check_plan(plan)
        if not specs:
            return {"feasible": False, "throughput_rps": 0.0, "ttft_s": math.inf, "gpus": 0, "cost_per_hour": 0.0}
        rps, ttft, price = 0.0, 0.0, 0.0
        for spec, gpu in specs:
            cost = self._sim.replica_cost(gpu.name, spec.tp, spec.pp)
            batch = max(1, min(256, cost.kv_capacity_tokens // max(1, int(workload.mean_prompt + workload.mean_output))))
            a, b = cost.decode_coefficients(batch)
            step = a + b * batch * (workload.mean_prompt + workload.mean_output / 2)
            prefill = cost.step_time(int(workload.mean_prompt), 1, 0, workload.mean_prompt ** 2 / 2)
            per_request = step * max(1.0, workload.mean_output) / batch + prefill
            rps += 1.0 / per_request
            ttft = max(ttft, prefill)
            price += gpu.price_per_hour * spec.tp * spec.pp
        load = workload.rate / rps if rps else math.inf
        if load < 1:
            ttft = ttft / (1 - load)  # M/M/1-style queueing inflation
        else:
            ttft = math.inf
        return {"feasible": True, "throughput_rps": rps, "ttft_s": ttft, "load": load,
                "gpus": sum(s.tp * s.pp for s, _ in specs), "cost_per_hour": price}


class ClusterView:
    __slots__ = ("gpus", "events", "now")

    def __init__(self, gpus: tuple, events: tuple, now: float):
        self.gpus, self.events, self.now = gpus, events, now

    def types(self) -> dict:
        """GPU type -> list of ids of online GPUs of that type."""
        out: dict[str, list[int]] = {}
        for g in self.gpus:
            out.setdefault(g.type, []).append(g.id)
        return out


class WindowView:
    """What ``reschedule`` sees of the recent past."""

    __slots__ = ("rate", "mean_prompt", "mean_output", "p99_ttft", "mean_ttft", "slo_attainment",
                 "imbalance", "outstanding", "utilization", "workload")

    def __init__(self, **values):
        for k, v in values.items():
            object.__setattr__(self, k, v)


class Simulation:
    """Runs one policy on one scenario."""

    def __init__(self, scenario: Any, policy: Any, gpus: dict[str, GPU], model: Model, calibration: Callable[[str], Calibration]):
        self.scenario, self.policy = scenario, policy
        self.epoch = 0  # deployments so far: a request queued under an earlier one runs first
        self.gpu_table, self.model, self.calibration = gpus, model, calibration
        self.estimate_cost_s = scenario.estimate_cost_s
        self.workload_estimate = Workload(*scenario.workload_estimate)
        self._costs: dict[tuple[str, int, int], ReplicaCost] = {}
        self.online: dict[int, GPU] = {}
        self.replicas: list[Replica] = []
        self.views: list[ReplicaView] = []
        self.events: list = []
        self.seq = 0
        self.overheads = Overheads()
        self.records: list[RequestRecord] = []
        self.cluster_log: list[ClusterEvent] = []
        # Cluster events the plan in place was not re-planned for (``never`` ignores a join, say):
        # a policy deployed later is shown them, so it can act on what its predecessor ignored.
        self.unanswered: list[ClusterEvent] = []
        self.plans: list[tuple[float, tuple]] = []
        self.gpu_seconds = 0.0
        self.cost_usd = 0.0
        self._gpu_online_since: dict[int, float] = {}
        self.router_queue: list[Request] = []
        self.recent: list[RequestRecord] = []
        self.arrivals_recent: list[Request] = []
        self.observer = None  # tests hook invariants here
        self.tokens_out = 0  # output tokens produced, counted step by step (conservation check)
        self._departed: dict[int, GPU] = {}
        self.active: list[Replica] = []
        self.active_views: tuple[ReplicaView, ...] = ()  # a tuple: dispatch gets it, and may not change it
        self.queued_on = scenario.queued_on

    # -- helpers ----------------------------------------------------------------------------
    def replica_cost(self, gpu_type: str, tp: int, pp: int) -> ReplicaCost:
        key = (gpu_type, tp, pp)
        cost = self._costs.get(key)
        if cost is None:
            gpu = self.gpu_table[gpu_type]
            cost = self._costs[key] = ReplicaCost(self.model, gpu, tp, pp, self.calibration(gpu_type))
        return cost

    def check_plan(self, plan) -> list[tuple[ReplicaSpec, GPU]]:
        """Validate a policy's plan; raises PolicyError with the reason."""
        if plan is None:
            return []
        try:
            entries = list(plan)
        except TypeError:
            raise PolicyError(f"a plan must be a list of (gpu_ids, tp, pp), got {type(plan).__name__}") from None
        used: set[int] = set()
        out = []
        for entry in entries:
            try:
                ids, tp, pp = entry
                ids = tuple(int(i) for i in ids)
                tp, pp = int(tp), int(pp)
            except (TypeError, ValueError):
                raise PolicyError(f"plan entry {entry!r} is not (gpu_ids, tp, pp)") from None
            if tp < 1 or pp < 1 or len(ids) != tp * pp:
                raise PolicyError(f"plan entry {entry!r}: needs tp * pp = {tp * pp} GPUs, has {len(ids)}")
            if any(i not in self.online for i in ids):
                raise PolicyError(f"plan entry {entry!r} uses a GPU that is not online")
            if used & set(ids) or len(set(ids)) != len(ids):
                raise PolicyError(f"plan entry {entry!r}: a GPU is used twice")
            used |= set(ids)
            types = {self.online[i].name for i in ids}
            if len(types) != 1:
                raise PolicyError(f"plan entry {entry!r} mixes GPU types {sorted(types)}")
            gpu = self.online[ids[0]]
            if not self.replica_cost(gpu.name, tp, pp).fits(min_tokens=1):
                raise PolicyError(f"{self.model.name} does not fit on {tp}x{pp} {gpu.name}")
            out.append((ReplicaSpec(ids, tp, pp), gpu))
        if len(out) > 256:
            raise PolicyError("plan has more than 256 replicas")
        return out

    def cluster_view(self, now: float, events: tuple = ()) -> ClusterView:
        gpus = tuple(GPUInfo(i, g.name, g.memory_gb, g.bf16_tflops, g.hbm_gbps, g.price_per_hour)
                     for i, g in sorted(self.online.items()))
        return ClusterView(gpus, events, now)

    def push(self, time: float, kind: int, payload: Any = None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, self.seq, kind, payload, version))

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Result:
        """The whole scenario at once (offline scoring)."""
        self.start()
        self.advance(math.inf)
        return self.result()

    def start(self) -> None:
        """Set up the cluster and the initial plan (the schedule policy runs here)."""
        sc = self.scenario
        self.requests = [Request(i, a, p, o) for i, (a, p, o) in enumerate(sc.requests)]
        for t, kind, ids in sc.cluster_events:
            self.push(t, CLUSTER, (kind, tuple(ids)))
        for gid, gname in sc.initial_gpus:
            self.online[gid] = self.gpu_table[gname]
            self._gpu_online_since[gid] = 0.0
        if sc.initial_plan is not None:  # a twin replay: the candidate deployed on the live plan
            self._apply_plan(0.0, sc.initial_plan, initial=True, loaded=True)
            self.unanswered = [ClusterEvent(0.0, kind, tuple(ids)) for kind, ids in sc.unanswered_events]
            plan_time = self.replan(0.0, self.workload_estimate) if sc.replan_at_start else 0.0
            if self.unanswered:
                self._reschedule(0.0, tuple(self.unanswered), self.workload_estimate, sc.initial_window)
        else:
            plan_time = self._apply_schedule(0.0)
        if sc.reschedule_interval:
            self.push(plan_time + sc.reschedule_interval, TICK)
        self.next_arrival = 0
        self.done = 0
        self.now = 0.0

    @property
    def finished(self) -> bool:
        return self.done >= len(self.requests)

    def deploy(self, policy: Any, replan: bool = False, reorder: bool = True) -> None:
        """Hot swap: decisions from now on use ``policy``.

        ``reorder``: the new policy orders requests differently, so the requests already queued
        go first, in the order they were promised, ahead of every later arrival (a new
        deployment epoch): keys of two programs are on unrelated scales (an arrival time, a
        prompt length, a constant), so one queue keyed by both could put every arrival ahead of
        the whole backlog or behind it. See docs/online_measured.md, Deployment, for why the backlog is
        not keyed again by the new program instead. Without it (the same ``priority``) the keys
        are on one scale and the queue stays one.

        ``replan``: the new policy plans differently, so run its ``schedule`` on the observed
        window now; a changed plan is applied after the estimates' time, paying reloads.
        """
        self.policy = policy
        self.epoch += reorder
        if replan:
            self.replan(self.now, self._window(self.now).workload)
        if self.unanswered:
            self._reschedule(self.now, tuple(self.unanswered))

    def replan(self, now: float, workload: Workload) -> float:
        """Run ``schedule`` on ``workload``; apply a different plan when its estimates are done."""
        view = CostModelView(self)
        decision = self._call_plan(lambda: self.policy.schedule(self.cluster_view(now), workload, view))
        self.overheads.scheduling_s += view._spent
        self.unanswered = []
        plan_now = tuple(tuple(r.spec) for r in self.replicas if not r.removed)
        if decision and sorted(tuple(tuple(s) for s in decision)) != sorted(plan_now):
            self.push(now + view._spent, APPLY, decision)
        return now + view._spent

    def advance(self, until: float) -> list[RequestRecord]:
        """Serve up to simulated time ``until`` (or the end); returns the records finished meanwhile."""
        requests, events, n = self.requests, self.events, len(self.requests)
        first_new = len(self.records)
        self._loop(requests, events, n, until)
        if not self.finished and until != math.inf:
            self.now = max(self.now, until)  # time passes even when nothing happens
        return self.records[first_new:]

    def _loop(self, requests, events, n, until) -> None:
        next_arrival, done = self.next_arrival, self.done
        try:
            while done < n:
                arrival = requests[next_arrival].arrival if next_arrival < n else math.inf
                if events and events[0][0] < arrival:
                    if events[0][0] > until:
                        break
                    done += self._event(events)
                    continue
                if arrival == math.inf:
                    raise PolicyError("simulation stalled: requests are waiting but no replica can serve them")
                if arrival > until:
                    break
                req = requests[next_arrival]
                next_arrival += 1
                self.now = req.arrival
                self.arrivals_recent.append(req)
                self._dispatch(req, self.now)
        finally:
            self.next_arrival, self.done = next_arrival, done

    def _event(self, events) -> int:
        """Handle the next event; returns how many requests it finished."""
        self.now, _, kind, payload, version = heapq.heappop(events)
        now = self.now
        if kind == STEP:
            replica = payload
            if version != replica.version:
                return 0
            finished = self._end_segment(replica, now)
            self._start(replica, now)
            return finished
        if kind == READY:
            payload.loading = False
            if not payload.removed and not payload.busy:
                self._start(payload, now)
        elif kind == TICK:
            self._reschedule(now, ())
            if not self.active and not any(e[2] in (CLUSTER, APPLY, READY) for e in events):
                # nothing serves and nothing will change: ticking on would never end
                raise PolicyError(f"no replica is left to serve at t={now:.0f} s and the policy does not re-plan")
            self.push(now + self.scenario.reschedule_interval, TICK)
        elif kind == CLUSTER:
            self._cluster_event(now, *payload)
        elif kind == APPLY:
            self._apply_plan(now, payload)
        return 0

    def result(self) -> Result:
        end = self.now
        for gid, since in self._gpu_online_since.items():
            self._account_gpu(gid, since, end)
        self._gpu_online_since = {gid: end for gid in self._gpu_online_since}
        return Result(self.records, self.overheads, self.gpu_seconds, self.cost_usd, end, self.plans)

    def _account_gpu(self, gid: int, since: float, until: float) -> None:
        seconds = max(0.0, until - since)
        gpu = self.online.get(gid) or self._departed[gid]
        self.gpu_seconds += seconds
        self.cost_usd += seconds / 3600.0 * gpu.price_per_hour

    # -- planning ---------------------------------------------------------------------------
    def _apply_schedule(self, now: float) -> float:
        view = CostModelView(self)
        plan = self._call_plan(lambda: self.policy.schedule(self.cluster_view(now), self.workload_estimate, view))
        if not plan:
            raise PolicyError("schedule returned an empty plan")
        self.overheads.scheduling_s += view._spent
        self._apply_plan(now + view._spent, plan, initial=True)
        return now + view._spent

    def _call_plan(self, call: Callable[[], Any]):
        plan = call()
        if plan is None or plan is False:
            return None
        if plan is True:
            return True
        return [spec for spec, _ in self.check_plan(plan)]

    def _reschedule(self, now: float, events: tuple, workload: Workload | None = None,
                    seen: dict | None = None) -> None:
        """Ask ``reschedule``. At a replay's start nothing is observed yet: ``workload`` and ``seen``
        (the live window's other fields) stand in, so the candidate decides as it would live."""
        view = CostModelView(self)
        window = WindowView(**seen, workload=workload) if seen else self._window(now)
        if workload is not None:
            window.workload = workload
        plan_now = tuple(tuple(r.spec) for r in self.replicas if not r.removed)
        decision = self._call_plan(lambda: self.policy.reschedule(window, self.cluster_view(now, events), plan_now, view))
        if decision is True:  # "re-plan": run the schedule policy on what was observed
            decision = self._call_plan(lambda: self.policy.schedule(self.cluster_view(now, events), window.workload, view))
        self.overheads.scheduling_s += view._spent
        if decision:
            self.unanswered = []  # the policy acted on what it was shown
            new = tuple(tuple(s) for s in decision)
            if sorted(new) != sorted(plan_now):
                self.push(now + view._spent, APPLY, decision)

    def _apply_plan(self, now: float, plan, initial: bool = False, loaded: bool = False) -> None:
        plan = [spec for spec, _ in self.check_plan(plan)]  # GPUs may have left meanwhile
        keep = {tuple(r.spec): r for r in self.replicas if not r.removed}
        wanted = [ReplicaSpec(*s) for s in plan]
        orphans: list[Request] = []
        kept_specs = set()
        for spec in wanted:
            if spec in keep:
                kept_specs.add(spec)
        for spec, replica in keep.items():
            if spec not in kept_specs:
                orphans += self._remove(replica, now)
        for spec in wanted:
            if spec in kept_specs:
                continue
            gpu = self.online[spec.gpus[0]]
            cost = self.replica_cost(gpu.name, spec.tp, spec.pp)
            ready = now if loaded else now + cost.load_time
            if not initial:
                self.overheads.reconfiguration_s += cost.load_time * cost.gpus
            replica = Replica(len(self.replicas), spec, gpu, cost, ready, self.scenario.token_budget, self.scenario.max_seqs)
            self.replicas.append(replica)
            self.views.append(ReplicaView(replica))
            self.push(ready, READY, replica, replica.version)
        if self.plans:
            self.overheads.reconfigurations += 1
        self.plans.append((now, tuple(tuple(s) for s in wanted)))
        self.active = [r for r in self.replicas if not r.removed]
        self.active_views = tuple(self.views[r.index] for r in self.active)
        for req in orphans + self.router_queue:
            self._dispatch(req, now, migrated=True)
        self.router_queue = [r for r in self.router_queue if r.replica is None]

    def _remove(self, replica: Replica, now: float) -> list[Request]:
        """Take a replica out of service; its requests are returned for migration (recompute)."""
        self._advance_partial(replica, now)
        replica.removed = True
        replica.version += 1
        orphans = [entry[-1] for entry in replica.waiting] + list(replica.prefilling)
        orphans += [req for _, _, req in replica.finishing if req.alive]
        orphans = list({id(req): req for req in orphans}.values())  # a rejoined request has two heap entries
        for req in orphans:
            if req.alive:
                req.generated += replica.counter - req.join_counter
                req.alive = False
            req.replica = None
            req.target = req.prompt + req.generated
            req.prefilled = 0
            if req.generated or req.preemptions:
                self.overheads.recomputed_tokens += req.target
        replica.waiting, replica.prefilling, replica.finishing = [], [], []
        replica.running = replica.context = replica.reserved = 0
        replica.busy = False
        return orphans

    def _cluster_event(self, now: float, kind: str, ids: tuple) -> None:
        event = ClusterEvent(now, kind, ids)
        self.cluster_log.append(event)
        if kind == "join":
            for gid, gname in ids:
                self.online[gid] = self.gpu_table[gname]
                self._gpu_online_since[gid] = now
            ids = tuple(g for g, _ in ids)
            event = ClusterEvent(now, kind, ids)
        elif kind == "leave":
            lost = set(ids)
            orphans = []
            for replica in self.replicas:
                if not replica.removed and lost & set(replica.spec.gpus):
                    orphans += self._remove(replica, now)
            for gid in ids:
                if gid in self.online:
                    self._account_gpu(gid, self._gpu_online_since.pop(gid), now)
                    self._departed[gid] = self.online.pop(gid)
            self.active = [r for r in self.replicas if not r.removed]
            self.active_views = tuple(self.views[r.index] for r in self.active)
            for req in orphans:
                self._dispatch(req, now, migrated=True)
        self.unanswered.append(event)
        self._reschedule(now, (event,))

    def _window(self, now: float) -> WindowView:
        horizon = self.scenario.window_s
        recent = [r for r in self.records[-5000:] if r.finish >= now - horizon]
        arrivals = [r for r in self.arrivals_recent[-20000:] if r.arrival >= now - horizon]
        self.arrivals_recent = arrivals
        span = min(horizon, max(now, 1e-9))
        rate = len(arrivals) / span
        prompts = sorted(r.prompt for r in arrivals) or [self.workload_estimate.mean_prompt]
        mean_prompt = sum(prompts) / len(prompts)
        mean_output = (sum(r.output_tokens for r in recent) / len(recent)) if recent else self.workload_estimate.mean_output
        ttfts = sorted(r.ttft for r in recent) or [0.0]
        slo = self.scenario.slo
        attained = sum(1 for r in recent if r.ttft <= slo.ttft_s and r.tpot <= slo.tpot_s)
        loads = [r.outstanding() for r in self.active] or [0]
        mean_load = sum(loads) / len(loads)
        busy = [r for r in self.active if r.busy]
        return WindowView(
            rate=rate, mean_prompt=mean_prompt, mean_output=mean_output,
            p99_ttft=ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))], mean_ttft=sum(ttfts) / len(ttfts),
            slo_attainment=attained / len(recent) if recent else 1.0,
            imbalance=max(loads) / mean_load if mean_load > 0 else 1.0,
            outstanding=sum(loads), utilization=len(busy) / max(1, len(self.active)),
            workload=Workload(rate, mean_prompt, mean_output, prompts[int(0.9 * (len(prompts) - 1))]),
        )

    # -- requests ---------------------------------------------------------------------------
    def _dispatch(self, req: Request, now: float, migrated: bool = False) -> None:
        views = self.active_views
        if not views:
            self.router_queue.append(req)
            return
        if migrated:
            req.info = RequestInfo(req.id, req.arrival, req.prompt, req.generated)
        replica = self._queued_live(req) if req.id < len(self.queued_on) and not migrated else None
        if replica is None:
            choice = self.policy.dispatch(req.info, views, now)
            if not 0 <= choice < len(views):
                raise PolicyError(f"dispatch returned {choice}, not a replica index in 0..{len(views) - 1}")
            replica = views[choice]._r
        replica.assigned += 1
        req.replica = replica
        req.epoch, req.key = self.epoch, self.policy.priority(req.info, now)  # a moved request queues anew
        heapq.heappush(replica.waiting, (req.epoch, req.key, req.seq, req))
        if not replica.busy:
            if replica.ready_at <= now:
                self._start(replica, now)
        elif replica.seg_steps > 1:
            self._interrupt(replica, now)

    def _queued_live(self, req: Request) -> Replica | None:
        """A twin replay's backlog request stays on the replica it was queued on live, as it does
        when a program is deployed: a new ``dispatch`` routes only what arrives after. None where
        it was on none, or that replica is not in the plan."""
        spec = self.queued_on[req.id]
        return next((r for r in self.active if spec is not None and tuple(r.spec) == spec), None)

    # -- a replica's steps ------------------------------------------------------------------
    def _admit(self, replica: Replica) -> None:
        waiting = replica.waiting
        while waiting and replica.running + len(replica.prefilling) < replica.max_seqs:
            req = waiting[0][-1]
            # room for this step's decode growth and the prompt's KV plus its first token
            if replica.kv_used + replica.running + req.target + 1 > replica.capacity:
                break  # plans must hold max_context tokens, so an empty replica always admits
            heapq.heappop(waiting)
            req.prefilled = 0
            replica.reserved += req.target + 1
            replica.prefilling.append(req)

    def _start(self, replica: Replica, now: float) -> None:
        if replica.removed or replica.ready_at > now:
            replica.busy = False
            return
        # decode growth first: vLLM preempts running requests before admitting new ones
        while replica.capacity - replica.kv_used < replica.running and replica.running > 1:
            self._preempt(replica)
        self._admit(replica)
        batch = replica.running
        if replica.prefilling:
            room = max(0, replica.budget - batch)
            chunks = []
            pairs = 0.0
            sampled = batch
            tokens = batch
            for req in replica.prefilling:
                if room <= 0:
                    break
                n = min(room, req.target - req.prefilled)
                chunks.append((req, n))
                pairs += n * (req.prefilled + (n + 1) / 2)
                room -= n
                tokens += n
                if req.prefilled + n == req.target:
                    sampled += 1
            if chunks:
                dt = replica.cost.step_time(tokens, sampled, replica.context, pairs)
                replica.seg_chunks = chunks
                replica.seg_steps = 1
                replica.seg_batch = batch
                return self._schedule_segment(replica, now, dt)
        if batch == 0:
            replica.busy = False
            return
        free = replica.capacity - replica.kv_used
        k_finish = replica.finishing[0][0] - replica.counter
        k_kv = max(1, free // batch)
        k = min(k_finish, k_kv)
        a, b = replica.cost.decode_coefficients(batch)
        replica.seg_a, replica.seg_b, replica.seg_batch = a, b, batch
        replica.seg_steps = k
        replica.seg_chunks = []
        dt = k * a + b * (k * replica.context + batch * k * (k - 1) / 2)
        self._schedule_segment(replica, now, dt)

    def _schedule_segment(self, replica: Replica, now: float, dt: float) -> None:
        replica.busy = True
        replica.seg_start = now
        replica.version += 1
        self.push(now + dt, STEP, replica, replica.version)

    def _decode_time(self, replica: Replica, k: int) -> float:
        a, b, batch = replica.seg_a, replica.seg_b, replica.seg_batch
        return k * a + b * (k * replica.context + batch * k * (k - 1) / 2)

    def _steps_done_by(self, replica: Replica, now: float) -> int:
        """Whole decode steps of the current run finished by ``now``."""
        elapsed = now - replica.seg_start
        a, b, batch, c = replica.seg_a, replica.seg_b, replica.seg_batch, replica.context
        qa, qb = b * batch / 2, a + b * c - b * batch / 2
        k = int((-qb + math.sqrt(qb * qb + 4 * qa * elapsed)) / (2 * qa)) if qa > 0 else int(elapsed / qb)
        k = max(0, min(k, replica.seg_steps))
        while k > 0 and self._decode_time(replica, k) > elapsed:
            k -= 1
        while k < replica.seg_steps and self._decode_time(replica, k + 1) <= elapsed:
            k += 1
        return k

    def _interrupt(self, replica: Replica, now: float) -> None:
        """An admissible request arrived mid-run: end the run at the next step boundary."""
        if replica.seg_chunks or replica.running + len(replica.prefilling) >= replica.max_seqs:
            return
        req = replica.waiting[0][-1]
        if replica.kv_used + replica.seg_batch * (replica.seg_steps + 1) + req.target + 1 > replica.capacity:
            return
        k = self._steps_done_by(replica, now) + 1
        if k < replica.seg_steps:
            replica.seg_steps = k
            replica.version += 1
            self.push(replica.seg_start + self._decode_time(replica, k), STEP, replica, replica.version)

    def _advance_partial(self, replica: Replica, now: float) -> None:
        """Before removing a replica mid-run: count the decode steps already done."""
        if replica.busy and not replica.seg_chunks and replica.seg_steps:
            k = min(self._steps_done_by(replica, now), replica.seg_steps - 1)
            replica.counter += k
            replica.context += k * replica.seg_batch
            self.tokens_out += k * replica.seg_batch
    
    def _end_segment(self, replica: Replica, now: float) -> int:
        finished = 0
        steps = replica.seg_steps
        if replica.seg_batch:
            self.tokens_out += steps * replica.seg_batch
            replica.counter += steps
            replica.context += steps * replica.seg_batch
            finished += self._complete(replica, now)
        for req, n in replica.seg_chunks:
            req.prefilled += n
            if req.prefilled == req.target:
                replica.prefilling.remove(req)
                replica.reserved -= req.target + 1
                req.generated += 1
                self.tokens_out += 1
                if req.first_token is None:
                    req.first_token = now
                if req.generated >= req.output:
                    finished += self._finish(req, now)
                    continue
                req.alive = True
                req.join_counter = replica.counter
                req.done_counter = replica.counter + (req.output - req.generated)
                replica.running += 1
                replica.context += req.target + 1
                heapq.heappush(replica.finishing, (req.done_counter, req.seq, req))
        replica.seg_chunks = []
        replica.seg_batch = 0
        replica.busy = False
        if self.observer:
            self.observer(self, replica, now)
        return finished

    def _complete(self, replica: Replica, now: float) -> int:
        finishing, finished = replica.finishing, 0
        while finishing and finishing[0][0] <= replica.counter:
            done, _, req = heapq.heappop(finishing)
            if not req.alive or done != req.done_counter:
                continue  # a stale entry of a request that was preempted and rejoined
            req.alive = False
            replica.running -= 1
            replica.context -= req.prompt + req.output
            req.generated = req.output
            finished += self._finish(req, now)
        return finished

    def _finish(self, req: Request, now: float) -> int:
        req.finish = now
        self.records.append(RequestRecord(req.arrival, req.first_token, now, req.prompt, req.output,
                                          req.replica.index if req.replica else -1, req.preemptions, req.id))
        return 1

    def _preempt(self, replica: Replica) -> None:
        """Cache full: evict the lowest-priority running request; it will be recomputed."""
        victim = max((r.epoch, r.key, r.seq, r) for _, _, r in replica.finishing if r.alive)[-1]
        victim.alive = False
        generated = victim.generated + replica.counter - victim.join_counter
        replica.running -= 1
        replica.context -= victim.prompt + generated
        victim.generated = generated
        victim.target = victim.prompt + generated
        victim.prefilled = 0
        victim.preemptions += 1
        self.overheads.recomputed_tokens += victim.target
        heapq.heappush(replica.waiting, (victim.epoch, victim.key, victim.seq, victim))


STEP, READY, TICK, CLUSTER, APPLY = range(5)
