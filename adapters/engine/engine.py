"""Continuous batching with a reserved KV cache: the engine's decisions, without its model.

One ``Engine`` is both the live engine and its twin. It keeps the waiting queue (a heap
ordered by the policy's ``priority``, asked once when a request arrives; requests queued
before a new policy was deployed stay ahead of those after it), admits from its
head while the batch has room and the KV cache can reserve the request's whole length
(prompt plus ``max_tokens``, so a running request is never preempted), and runs steps:
each step prefills what it admitted, which gives their first tokens, and decodes one token
for every request already running. What a step costs comes from its executor: the torch
model (``model.TorchExecutor``, wall-clock seconds measured) or ``Costs`` fitted to that
model (``Modelled``, deterministic). So the twin replays a window with the very
scheduling code that served it, and only the step times are a model.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, astuple, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from autopoiesis.metrics import RequestRecord


@dataclass(eq=False)  # a request is itself: the engine finds it by identity
class Request:
    id: int
    arrival: float
    prompt_tokens: int
    max_tokens: int
    generated: int = 0
    first_token: float = math.nan
    finish: float = math.nan
    slot: int = -1  # the executor's KV slot while running

    @property
    def length(self) -> int:
        """Tokens the KV cache holds for it at the end: what admission reserves."""
        return self.prompt_tokens + self.max_tokens

    def view(self) -> SimpleNamespace:
        """What a policy sees: a copy, so untrusted code cannot change the engine's request."""
        return SimpleNamespace(id=self.id, arrival=self.arrival, prompt_tokens=self.prompt_tokens,
                               max_tokens=self.max_tokens)

    def record(self) -> RequestRecord:
        return RequestRecord(self.arrival, self.first_token, self.finish, self.prompt_tokens, self.generated,
                             replica=0, request_id=self.id)


@dataclass(frozen=True)
class Config:
    """The engine's limits: sequences per batch, and KV-cache tokens (reserved per request)."""

    max_batch: int = 16
    kv_tokens: int = 4096
    max_prompt: int = 1024
    max_output: int = 256


class Engine:
    """The waiting heap, the running batch, and one step at a time (see the module's docstring)."""

    def __init__(self, config: Config, executor: Any, priority: Callable[[Any, float], float]):
        self.config, self.executor, self.priority = config, executor, priority
        self.waiting: list[tuple[int, float, float, int, Request]] = []  # (epoch, priority, arrival, id, request)
        self.epoch = 0  # policies deployed so far
        self.running: list[Request] = []
        self.reserved = 0
        self.steps = 0
        self.tokens = 0  # generated so far

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, request: Request, now: float) -> None:
        """Queue ``request`` at the place its priority says (an int past float's range raises)."""
        key = float(self.priority(request.view(), now))
        if not math.isfinite(key):
            key = math.inf  # NaN would break the heap's order; +-inf are orders too
        heapq.heappush(self.waiting, (self.epoch, key, request.arrival, request.id, request))

    def new_epoch(self) -> None:
        """A policy with a new order is deployed: every request waiting now runs before any that arrives later.

        The backlog keeps the order it was promised. Keys of two programs are on unrelated
        scales; left in one heap, every arrival after a swap could rank ahead of the whole
        backlog, or behind it (docs/online.md, Deployment)."""
        self.epoch += 1

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        cfg = self.config
        while self.waiting and len(self.running) + len(admitted) < cfg.max_batch:
            request = self.waiting[0][-1]
            if self.reserved + request.length > cfg.kv_tokens:
                break  # strict order: the head waits for room, nothing overtakes it
            heapq.heappop(self.waiting)
            self.reserved += request.length
            admitted.append(request)
        return admitted

    def step(self, now: float) -> tuple[float, list[Request]]:
        """Run one step that starts at ``now``: (when it ended, the requests it finished)."""
        admitted = self._admit()
        decoding = list(self.running)
        if not admitted and not decoding:
            return now, []
        end = now + self.executor.step(admitted, decoding)
        self.steps += 1
        self.tokens += len(decoding) + len(admitted)
        for r in decoding:
            r.generated += 1
        for r in admitted:  # a prefill yields the first token
            r.generated, r.first_token = 1, end
        done = [r for r in decoding + admitted if r.generated >= r.max_tokens]
        self.running = [r for r in decoding + admitted if r.generated < r.max_tokens]
        for r in done:
            r.finish = end
            self.reserved -= r.length
            self.executor.release(r)
        return end, done


# -- the twin's step costs ----------------------------------------------------------------
def shape(prefill: Sequence[Request], decode: Sequence[Request]) -> tuple[float, ...]:
    """What a step's cost depends on, in ``Costs``' order.

    The torch model pads a decode batch to its longest context, so decode attention costs
    sequences x that context; past a size the padded batch outgrows the CPU's caches and the
    cost grows faster, hence the squares (a prefill's attention is quadratic in its prompt).
    """
    padded = float(len(decode) * max((r.prompt_tokens + r.generated for r in decode), default=0))
    return (1.0 if prefill else 0.0, float(sum(r.prompt_tokens for r in prefill)),
            float(sum(r.prompt_tokens ** 2 for r in prefill)),
            1.0 if decode else 0.0, float(len(decode)), padded, padded ** 2)


@dataclass(frozen=True)
class Costs:
    """Seconds per step: the sum of each coefficient times the step's ``shape``.

    step = prefill_base_s [any prefill] + prefill_per_token_s x prompt tokens prefilled
         + prefill_per_token_sq_s x the sum of the squared prompt lengths
         + decode_base_s [any decode] + decode_per_seq_s x sequences
         + decode_per_context_s x P + decode_per_context_sq_s x P^2,
           P = sequences x the longest context among them
    """

    prefill_base_s: float = 2e-3
    prefill_per_token_s: float = 8e-5
    prefill_per_token_sq_s: float = 0.0
    decode_base_s: float = 1.5e-3
    decode_per_seq_s: float = 1.5e-4
    decode_per_context_s: float = 2e-6
    decode_per_context_sq_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def step(self, prefill: Sequence[Request], decode: Sequence[Request]) -> float:
        return self.step_of(shape(prefill, decode))

    def step_of(self, x: Sequence[float]) -> float:
        return sum(c * v for c, v in zip(astuple(self), x))

    def scaled(self, factor: float) -> "Costs":
        return Costs(*(c * factor for c in astuple(self)))


@dataclass
class Modelled:
    """An executor that computes nothing and charges ``costs`` per step: the twin."""

    costs: Costs = field(default_factory=Costs)

    def step(self, prefill: Sequence[Request], decode: Sequence[Request]) -> float:
        return self.costs.step(prefill, decode)

    def release(self, request: Request) -> None:
        pass


def fit(steps: Sequence[tuple[tuple[float, ...], float]]) -> Costs:
    """``Costs`` fitted to timed steps ((shape, seconds) pairs), by least squares on relative error.

    Each shape's time is the median of the fastest half of its repeats (a step slowed by
    another process is noise here; ``scale`` puts the live level back). A coefficient the
    data would make negative is held at zero (at 1 us for the two bases) and the others
    are refitted.
    """
    by_shape: dict[tuple, list[float]] = {}
    for x, seconds in steps:
        by_shape.setdefault(tuple(x), []).append(seconds)
    x = np.array(list(by_shape), float)
    y = np.array([np.median(sorted(ts)[: max(1, len(ts) // 2)]) for ts in by_shape.values()])
    floor = np.array([1e-6, 0.0, 0.0, 1e-6, 0.0, 0.0, 0.0])
    w = 1.0 / np.maximum(y, 1e-9)  # a 2 ms step matters as much as an 80 ms one
    free = [j for j in range(len(floor)) if np.any(x[:, j])]
    coef = floor.copy()
    while free:
        fixed = [j for j in range(len(floor)) if j not in free]
        target = y - x[:, fixed] @ coef[fixed]
        scale_ = np.abs(x[:, free]).max(axis=0)  # columns from 1 to 1e7: solve on a common scale
        solved = np.linalg.lstsq(x[:, free] / scale_ * w[:, None], target * w, rcond=None)[0] / scale_
        low = [j for j, v in zip(free, solved) if v < floor[j]]
        if not low:
            coef[free] = solved
            break
        free = [j for j in free if j not in low]
    return Costs(*(float(c) for c in coef))


def scale(costs: Costs, steps: Sequence[tuple[tuple[float, ...], float]]) -> float:
    """How much longer ``steps`` took in all than ``costs`` predicts (1.0 without steps).

    Live steps pay the serving loop's bookkeeping, the evolution plane's share of the cores,
    the odd garbage collection, and the machine's drift; their total over the prediction's
    is the one factor the twin's costs are scaled by. Only the level moves: the shape of
    the costs stays the calibration's, which covers batch sizes a quiet stretch never shows.
    """
    predicted = sum(costs.step_of(x) for x, _ in steps)
    return sum(seconds for _, seconds in steps) / predicted if predicted > 0 else 1.0


def serve(engine: Engine, requests: Sequence[Request]) -> None:
    """Serve ``requests`` (sorted by arrival) on ``engine`` in its executor's time, to the last token."""
    now, i = 0.0, 0
    while i < len(requests) or engine.busy:
        if not engine.busy:
            now = max(now, requests[i].arrival)
        while i < len(requests) and requests[i].arrival <= now:
            engine.add(requests[i], requests[i].arrival)
            i += 1
        now, _ = engine.step(now)


def replay(policy: Any, requests: Sequence[Sequence[float]], config: Config, costs: Costs) -> list[RequestRecord]:
    """Serve ``requests`` ((arrival, prompt, max_tokens), sorted) on the twin; one record each."""
    pending = [Request(i, float(a), int(p), int(m)) for i, (a, p, m) in enumerate(requests)]
    serve(Engine(config, Modelled(costs), policy.priority), pending)
    return [r.record() for r in pending]
