"""The calibrated twin of a vLLM fleet: measured step costs, counterfactual replay of a window.

The simulator's roofline model predicts a GPU from its datasheet; live servers can be
measured instead. ``fit`` reads the router's records and fits, by least squares, the
two costs of vLLM's continuous batching that a dispatch or priority policy trades:

    time per output token  = decode_base_s + decode_per_seq_s * sequences decoding together
    time to first token    = prefill_base_s + prefill_per_token_s * prompt tokens   (no queueing)

Both lines run under their clouds (least squares on the points at or below the line,
refit a few times): a request that waited behind another's prefill shows a longer time
than the engine's cost, never a shorter one, and the twin adds those waits itself. Two
kinds of record would break that, so neither is fitted on: a stream that arrived in one
piece (vLLM merges a request's pending tokens into one chunk when its API process falls
behind, so its time per token reads near 0 and its first token comes late), and a prefill
line on fewer than ``MIN_POINTS`` requests that found a free slot (past capacity almost
none do, and the few that did shared their step with another's long prefill): such a
line keeps the previous fit's costs. ``refit`` then scales the fit to replay the last window.

``replay`` serves a window's requests on that model (one engine per replica: a waiting
queue ordered by ``priority``, at most ``max_batch`` sequences running, each step one
token for every running sequence plus the prefills admitted in it) with a candidate's
``dispatch`` and ``priority``. ``prediction_error`` replays the incumbent on what it
actually served and compares: that is the twin's honesty, reported per window.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np

from autopoiesis.metrics import SLO, WINDOW_METRICS, RequestRecord, RollingWindow


@dataclass(frozen=True)
class Costs:
    """Engine step costs of one replica (seconds); the defaults are a cold start's guess."""

    prefill_base_s: float = 0.02
    prefill_per_token_s: float = 1e-4
    decode_base_s: float = 0.02
    decode_per_seq_s: float = 1e-3
    max_batch: int = 256
    samples: int = 0  # records the fit used (0: defaults)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _overlap(records: Sequence[RequestRecord]) -> np.ndarray:
    """For each record, the mean number of same-replica requests decoding during its own decode."""
    out = np.ones(len(records))
    by_replica: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_replica.setdefault(r.replica, []).append(i)
    for members in by_replica.values():
        starts = np.array([records[i].first_token for i in members])
        ends = np.array([records[i].finish for i in members])
        for k, i in enumerate(members):
            a, b = starts[k], ends[k]
            if b <= a:
                continue
            shared = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0.0, None)
            out[i] = float(shared.sum() / (b - a))  # includes itself: >= 1
    return out


def _active_at_arrival(records: Sequence[RequestRecord]) -> np.ndarray:
    """How many same-replica requests were unfinished when each record arrived."""
    out = np.zeros(len(records))
    replica = np.array([r.replica for r in records])
    arrival = np.array([r.arrival for r in records])
    finish = np.array([r.finish for r in records])
    for k in np.unique(replica):
        idx = np.flatnonzero(replica == k)
        a, f = arrival[idx], finish[idx]
        out[idx] = ((a[None, :] < a[:, None]) & (a[:, None] < f[None, :])).sum(axis=1)
    return out


MIN_POINTS = 8  # fewer records than this, for the whole fit or for one of its lines, keep the previous costs


def streamed(records: Sequence[RequestRecord]) -> np.ndarray:
    """Which records' tokens arrived one by one: those whose time per token is not near 0.

    A merged stream's whole output comes with its first token (time per token ~0.1 ms,
    against 6-500 ms for the others in the runs in tests/data/vllm_runs), so the cut is
    wide: under a twentieth of the upper quartile.
    """
    tpot = np.array([r.tpot for r in records])
    return tpot >= np.quantile(tpot, 0.75) / 20 if len(tpot) else np.zeros(0, bool)


def merged(records: Iterable[RequestRecord]) -> int:
    """How many of the served records with more than one token arrived in one piece."""
    decoded = [r for r in records if r.ok and r.output_tokens > 1]
    return int(len(decoded) - streamed(decoded).sum())


def fit(records: Iterable[RequestRecord], max_batch: int = 256, previous: Costs | None = None) -> Costs:
    """Least-squares costs from finished requests; a line with too few points keeps ``previous``'s."""
    recs = [r for r in records if r.ok and r.output_tokens > 1 and r.finish > r.first_token >= r.arrival]
    base = previous or Costs(max_batch=max_batch)
    if len(recs) < MIN_POINTS:
        return Costs(**{**base.to_dict(), "max_batch": max_batch})
    recs = recs[-2000:]
    timed = streamed(recs)
    concurrency = _overlap(recs)
    tpot = np.array([r.tpot for r in recs])
    decode = (base.decode_base_s, base.decode_per_seq_s)
    if timed.sum() >= MIN_POINTS:
        decode = _lower_line(concurrency[timed], tpot[timed])
    # prefill: requests that found a free slot did not queue; their TTFT is prefill (plus a step)
    free = timed & (_active_at_arrival(recs) < max_batch)
    prefill = (base.prefill_base_s, base.prefill_per_token_s)
    if free.sum() >= MIN_POINTS:
        prefill = _lower_line(np.array([r.prompt_tokens for r in recs], float)[free],
                              np.array([r.ttft for r in recs])[free])
    return Costs(*prefill, *decode, max_batch, len(recs))


def window(records: Sequence[RequestRecord], since: float, until: float, limit: int = 1000
           ) -> tuple[list[tuple[float, int, int]], list[int], list[RequestRecord]]:
    """What to replay to reproduce the window [since, until]: (requests, served, pool).

    ``served`` indexes the requests that arrived in the window and finished in it (their
    latencies are known). The replay starts at the earliest arrival still unfinished when
    the window opened, so the backlog the window inherited is there too.
    """
    ok = [r for r in records if r.ok and r.arrival <= until]
    start = min((r.arrival for r in ok if r.arrival < since < r.finish), default=since)
    pool = sorted((r for r in ok if r.arrival >= start), key=lambda r: r.arrival)[-limit:]
    start = pool[0].arrival if pool else since
    served = [i for i, r in enumerate(pool) if r.arrival >= since and r.finish <= until]
    return [(r.arrival - start, r.prompt_tokens, r.output_tokens) for r in pool], served, pool


def snapshot_requests(records: Sequence[RequestRecord], open_calls: Iterable[Any], since: float, until: float,
                      up: Sequence[int]) -> list[tuple[float, int, int, int]]:
    """What a candidate replays of the window [since, until]: (arrival, prompt, output, replica), from 0 s.

    The requests that arrived in it, and the backlog it inherited at 0 s: those finished
    (``records``) and those still open at ``until`` (the router's calls, output unknown: the
    mean of the finished). A backlog request keeps the server it is on live, as its position
    in ``up`` (the router's indices of the servers up, the twin's engines in order; -1 where
    its server is down): a deployment routes only what arrives after it, and the router never
    moves a request. Every other request has -1, for the candidate's ``dispatch`` to route.
    The backlog, all at 0 s, comes in its live order, so that where a candidate's keys tie
    (FCFS's all do at 0 s) the replay keeps it, as the simulator's does.
    """
    position = {index: i for i, index in enumerate(up)}
    kept = [r for r in records if r.ok and (since <= r.arrival <= until or r.arrival < since < r.finish)]
    done = [r for r in kept if r.finish <= until]
    mean_out = max(2, round(sum(r.output_tokens for r in done) / len(done)) if done else 16)

    def request(arrival: float, prompt: int, output: int, replica: int) -> tuple[float, int, int, int]:
        on = position.get(replica, -1) if arrival < since else -1
        return round(max(0.0, arrival - since), 6), int(prompt), int(output), on

    seen = {r.arrival for r in kept}
    rows = [(r.arrival, r.prompt_tokens, r.output_tokens if r.finish <= until else mean_out, r.replica) for r in kept]
    rows += [(c.arrival, c.prompt_tokens, mean_out, c.replica) for c in open_calls
             if c.arrival <= until and c.arrival not in seen]
    return [request(*row) for row in sorted(rows)]  # by live arrival


LIMIT = 1.5


def refine(costs: Costs, policy: Any, records: Sequence[RequestRecord], since: float, until: float, replicas: int,
           rounds: int = 2) -> Costs:
    """Scale the fitted prefill and decode costs so the twin replays ``served`` as it happened.

    The least-squares lines see a step's time smeared over the requests sharing it (a
    prefill lengthens its neighbours' tokens); replaying the served requests and
    matching their mean TTFT and end-to-end latency removes that bias. A few coordinate
    steps over scale factors, one replay each, within a factor ``LIMIT`` of the fit: past
    capacity a window's latency hangs on small differences in throughput, and matching it
    at any price would wreck the costs for the next one.
    """
    requests, served, pool = window(records, since, until)
    if len(served) < MIN_POINTS:
        return costs
    timed = [i for i, ok in zip(served, streamed([pool[i] for i in served])) if ok] or served  # merged: TTFT late
    observed = (float(np.mean([pool[i].ttft for i in timed])), float(np.mean([pool[i].e2e for i in served])))

    def scaled(a: float, b: float) -> Costs:
        return Costs(costs.prefill_base_s * a, costs.prefill_per_token_s * a, costs.decode_base_s * b,
                     costs.decode_per_seq_s * b, costs.max_batch, costs.samples)

    def error(a: float, b: float) -> float:
        replayed = replay(policy, requests, replicas, scaled(a, b))
        ttft = float(np.mean([replayed[i].ttft for i in timed]))
        e2e = float(np.mean([replayed[i].e2e for i in served]))
        return abs(ttft - observed[0]) / max(observed[0], 1e-9) + abs(e2e - observed[1]) / max(observed[1], 1e-9)

    best, factors = (1.0, 1.0), (0.5, 0.7, 0.85, 1.2, 1.4, 2.0)
    best_error = error(*best)
    for _ in range(rounds):
        for axis in (1, 0):
            for f in factors:
                trial = (best[0] * f, best[1]) if axis == 0 else (best[0], best[1] * f)
                if not all(1 / LIMIT <= x <= LIMIT for x in trial):
                    continue
                e = error(*trial)
                if e < best_error:
                    best, best_error = trial, e
    return scaled(*best)


def refit(anchor: Costs, policy: Any, records: Sequence[RequestRecord], since: float, until: float,
          replicas: int) -> tuple[Costs, Costs]:
    """After a window: (the least-squares fit, that fit scaled to replay the window).

    The second is what candidates are scored with; the first is the next call's ``anchor``.
    A line without enough points keeps the anchor's, the last fit rather than the last scaled
    costs, so each window's scaling stays within ``LIMIT`` of a fit instead of compounding
    on the previous window's (past capacity the prefill line can go many windows unfitted).
    """
    fitted = fit(records, anchor.max_batch, anchor)
    return fitted, refine(fitted, policy, records, since, until, replicas) if fitted.samples else fitted


def replayed(program: str, baseline: str, pool: Sequence[RequestRecord], since: float, until: float,
             replicas: int, costs: Costs | None, fitted: Costs) -> tuple[float | None, Costs]:
    """The replays of a live window with the program that served it: (the twin's error on
    it with ``costs``, those before it, None for none yet; ``fitted`` scaled to replay it).

    The program runs here, under the hot path's deadline, the router's baseline behind it.
    ``VLLMAdapter.window_metrics`` sends this to a ``decision_process.Worker``: about 25
    replays of the window call the program too often for a round trip per call, and none of
    those calls then runs in the serving process. ``pool`` (``window``'s) is all that travels.
    """
    from autopoiesis.hot_path import hot_path
    from autopoiesis.program import Program

    from .slots import SLOTS

    policy = hot_path(Program(program), [Program(baseline)], SLOTS)
    error = prediction_error(policy, pool, since, until, replicas, costs) if costs is not None else None
    return error, refine(fitted, policy, pool, since, until, replicas) if fitted.samples else fitted


def _lower_line(x: np.ndarray, y: np.ndarray, share: float = 0.3, rounds: int = 4) -> tuple[float, float]:
    """A line under the cloud: least squares, then again on the ``share`` of points with the lowest residuals."""
    a, b = _line(x, y)
    for _ in range(rounds):
        residual = y - (a + b * x)
        keep = residual <= np.quantile(residual, share)
        if keep.sum() < 3:
            break
        a, b = _line(x[keep], y[keep])
    return a, b


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y = a + b x with a, b >= 0 (a flat cloud of x gives b = 0 and a = mean y)."""
    if len(x) < 2 or float(np.ptp(x)) < 1e-9:
        return max(float(np.mean(y)), 1e-6), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return max(float(np.mean(y)), 1e-6), 0.0
    if a < 0:
        b = float(np.sum(x * y) / np.sum(x * x))
        return 1e-6, max(b, 0.0)
    return float(a), float(b)


# -- replay -------------------------------------------------------------------------------
class _Engine:
    """One replica's continuous batching: waiting heap, running set, one step at a time."""

    def __init__(self, index: int, costs: Costs):
        self.index, self.costs = index, costs
        self.waiting: list[tuple[float, float, int]] = []  # (priority, arrival, request)
        self.running: dict[int, int] = {}  # request -> tokens still to produce
        self.assigned = 0
        self.busy_until = 0.0
        self.stepping = False  # a next step is scheduled

    def view(self) -> SimpleNamespace:
        n_run, n_wait = len(self.running), len(self.waiting)
        return SimpleNamespace(index=self.index, url=f"twin-{self.index}", outstanding=n_run + n_wait,
                               assigned=self.assigned, running=n_run, waiting=n_wait,
                               kv_used_fraction=min(1.0, n_run / max(1, self.costs.max_batch)), ready=True)


def _pinned(request: Sequence[float], engines: int) -> int:
    """The engine a request is already on (``snapshot_requests``'s fourth field), -1 for none."""
    on = int(request[3]) if len(request) > 3 else -1
    return on if on < engines else -1


def replay(policy: Any, requests: Sequence[Sequence[float]], replicas: int, costs: Costs) -> list[RequestRecord]:
    """Serve ``requests`` ((arrival, prompt, output[, replica]), sorted) on ``replicas`` twin
    engines; a request with a replica (>= 0) stays there, ``dispatch`` routes the others."""
    engines = [_Engine(i, costs) for i in range(max(1, replicas))]
    first = [math.nan] * len(requests)
    finish = [math.nan] * len(requests)
    where = [0] * len(requests)
    steps: list[tuple[float, int]] = []  # (time the engine's next step starts, engine)
    i, n = 0, len(requests)
    while i < n or steps:
        if i < n and (not steps or requests[i][0] <= steps[0][0]):
            t, prompt, pinned = requests[i][0], requests[i][1], _pinned(requests[i], len(engines))
            request = SimpleNamespace(id=i, arrival=t, prompt_tokens=int(prompt), generated=0)
            views = tuple(e.view() for e in engines)  # as the router and the validator give them
            choice = pinned if pinned >= 0 else int(policy.dispatch(request, views, t)) if len(engines) > 1 else 0
            e = engines[choice]
            e.assigned += 1
            where[i] = choice
            heapq.heappush(e.waiting, (float(policy.priority(request, t)), t, i))
            if not e.stepping:
                e.stepping = True
                heapq.heappush(steps, (max(t, e.busy_until), choice))
            i += 1
            continue
        now, k = heapq.heappop(steps)
        e = engines[k]
        admitted = []
        while e.waiting and len(e.running) + len(admitted) < costs.max_batch:
            admitted.append(heapq.heappop(e.waiting)[2])
        duration = costs.prefill_base_s + costs.prefill_per_token_s * sum(requests[r][1] for r in admitted) \
            if admitted else 0.0
        if e.running:
            duration += costs.decode_base_s + costs.decode_per_seq_s * len(e.running)
        end = now + max(duration, 1e-6)
        for r in list(e.running):
            e.running[r] -= 1
            if e.running[r] <= 0:
                del e.running[r]
                finish[r] = end
        for r in admitted:  # a prefill step yields the first token
            first[r] = end
            left = int(requests[r][2]) - 1
            if left > 0:
                e.running[r] = left
            else:
                finish[r] = end
        e.busy_until = end
        e.stepping = bool(e.running or e.waiting)
        if e.stepping:
            heapq.heappush(steps, (end, k))
    return [RequestRecord(float(requests[r][0]), first[r], finish[r], int(requests[r][1]), int(requests[r][2]),
                          replica=where[r], request_id=r) for r in range(n)]


def score(policy: Any, params: dict) -> dict[str, float]:
    """The metrics of ``policy`` replaying a window snapshot (what ``evaluate`` returns)."""
    costs = Costs(**params["costs"])
    requests = sorted((tuple(r) for r in params["requests"]), key=lambda r: r[0])  # stable: a backlog keeps its order
    window = RollingWindow()
    for record in replay(policy, requests, params["replicas"], costs):
        window.add(record)
    metrics = window.summary(SLO(**params.get("slo", {})))
    if not requests:
        metrics = {**dict.fromkeys(WINDOW_METRICS, 0.0), "slo_attainment": 1.0}  # any objective has a value
    return metrics


def prediction_error(policy: Any, records: Sequence[RequestRecord], since: float, until: float, replicas: int,
                     costs: Costs) -> float | None:
    """Relative error of the twin's mean end-to-end latency for the requests the window served."""
    requests, served, pool = window(records, since, until)
    if len(served) < 3:
        return None
    replayed = replay(policy, requests, replicas, costs)
    predicted = float(np.mean([replayed[i].e2e for i in served]))
    observed = float(np.mean([pool[i].e2e for i in served]))
    return abs(predicted - observed) / observed if observed > 0 else None


# The router's own choice before any program is deployed: least outstanding, first come first served.
ROUTER_DEFAULT = SimpleNamespace(dispatch=lambda request, replicas, now: min(
    range(len(replicas)), key=lambda i: replicas[i].outstanding), priority=lambda request, now: request.arrival)


def capacity(requests: Sequence[Sequence[float]], replicas: int, costs: Costs) -> float:
    """Requests per second the twin serves of these shapes when they all wait at time 0.

    The rate past which a queue of this length mix grows without bound, under the router's
    default policy: what ``--load-factor`` multiplies.
    """
    waiting = [(i * 1e-9, int(p), int(o)) for i, (_, p, o) in enumerate(requests)]  # all at once, in order
    if not waiting:
        raise ValueError("no requests to measure a capacity on")
    served = replay(ROUTER_DEFAULT, waiting, replicas, costs)
    return len(served) / max(r.finish for r in served)
