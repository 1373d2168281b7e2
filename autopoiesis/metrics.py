"""Fitness, objectives and snapshots: the shape every adapter's scores take.

An adapter's ``evaluate`` returns a flat mapping of metric name to number; the core
turns the mean over a run's training snapshots into a ``Fitness`` and ranks by its
objective. Live-window types (RequestRecord, RollingWindow, drift) join this module
with the online controller.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Objective:
    """A metric to optimise and its direction ('min' or 'max')."""

    name: str
    direction: str = "min"

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise ValueError(f"objective direction must be 'min' or 'max', not {self.direction!r}")

    @property
    def weight(self) -> float:
        """DEAP's convention: negative weight minimises."""
        return -1.0 if self.direction == "min" else 1.0

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "min" else a > b

    def improvement(self, new: float, old: float) -> float:
        """Relative gain of new over old, positive when new is better."""
        if old == 0:
            return 0.0
        gain = (old - new) / abs(old)
        return gain if self.direction == "min" else -gain

    @classmethod
    def parse(cls, text: str) -> "Objective":
        """'name' (minimise), 'min:name' or 'max:name'."""
        direction, _, name = text.rpartition(":")
        return cls(name.strip(), direction.strip() or "min")

    def __str__(self) -> str:
        return f"{self.direction}:{self.name}"


def check_reported(objectives: Iterable[Objective], adapter: Any) -> None:
    """Raise ValueError for an objective the adapter says it does not report (its ``metrics``;
    an adapter that names none is not checked, and fails when its metrics come back)."""
    known = tuple(getattr(adapter, "metrics", ()) or ())
    for objective in objectives:
        if known and objective.name not in known:
            raise ValueError(f"adapter '{adapter.name}' reports no metric {objective.name!r} "
                             f"(it reports: {', '.join(known)})")


@dataclass(frozen=True)
class Fitness:
    """A named metric vector plus the objective(s) a strategy ranks by."""

    values: Mapping[str, float]
    objectives: tuple[Objective, ...]

    @property
    def scalar(self) -> float:
        return self.values[self.objectives[0].name]

    def vector(self) -> tuple[float, ...]:
        return tuple(self.values[o.name] for o in self.objectives)

    @classmethod
    def mean(cls, samples: Iterable[Mapping[str, float]], objectives: tuple[Objective, ...]) -> "Fitness":
        samples = list(samples)
        keys = [k for k in samples[0] if all(k in s for s in samples)]
        values = {k: math.fsum(s[k] for s in samples) / len(samples) for k in keys}
        missing = [o.name for o in objectives if o.name not in values]
        if missing:
            raise KeyError(f"the adapter reported no metric {', '.join(missing)} (it has: {', '.join(keys)})")
        return cls(values, objectives)


@dataclass(frozen=True)
class Snapshot:
    """What a program is scored on: a seeded workload offline, a recorded window online.

    ``key`` hashes the adapter's name and the parameters, so (program id, snapshot
    key) identifies an evaluation and caches it across runs (while the adapter's code is
    unchanged: ``adapters.base.adapter_code``)."""

    adapter: str
    params: Mapping[str, Any]
    label: str = ""
    key: str = field(init=False)

    def __post_init__(self) -> None:
        blob = json.dumps([self.adapter, self.params], sort_keys=True, default=str)
        object.__setattr__(self, "key", hashlib.sha256(blob.encode()).hexdigest()[:16])


def check_metrics(metrics: Any) -> dict[str, float]:
    """Adapters return plain finite numbers; anything else is an adapter bug worth a clear message."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise TypeError(f"evaluate() must return a non-empty mapping of metric -> number, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value!r}, not a finite number")
        out[str(key)] = float(value)
    return out


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as every adapter reports it (times in seconds)."""

    arrival: float
    first_token: float
    finish: float
    prompt_tokens: int
    output_tokens: int
    replica: int = -1
    preemptions: int = 0
    request_id: int = -1
    outcome: str = "ok"  # or why it failed ("error: ...", "rejected: 400"); only "ok" counts in latency

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first."""
        return (self.finish - self.first_token) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


@dataclass(frozen=True)
class EngineSample:
    """One replica's engine state at one moment (the simulator's, or scraped from /metrics)."""

    time: float
    replica: int
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0  # fraction of the KV cache in use
    preemptions: float = 0.0  # since the previous sample
    tokens: float = 0.0  # generated since the previous sample
    latency: Mapping[str, float] = field(default_factory=dict)  # mean ttft/itl/e2e/queue s since the previous


@dataclass
class Observation:
    """What the live system reported between two ``observe`` calls."""

    now: float
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[EngineSample] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, detail): cluster changes
    arrivals: int = 0  # requests that arrived
    arrival_prompts: list[int] = field(default_factory=list)  # their prompt lengths, where known on arrival
    calls: dict[str, int] = field(default_factory=dict)  # hot-path policy calls by slot
    fallbacks: dict[str, int] = field(default_factory=dict)  # of which fell back to the incumbent's decision
    stalls: int = 0  # calls that passed the deadline in real time while hardly computing (a stalled machine)
    finished: bool = False  # the live system has nothing more to serve (a replayed workload ended)
    in_flight: list[float] = field(default_factory=list)  # arrival times of requests not finished at ``now``


def open_latency(records: Iterable["RequestRecord"], in_flight: Iterable[float], now: float) -> float | None:
    """Mean end-to-end latency counting unfinished requests at their age so far (a lower bound).

    Finished requests alone flatter a policy that starves some: the starved never finish
    inside the window. This is the Guard's view of a live window.
    """
    values = [r.e2e for r in records if r.ok] + [now - a for a in in_flight]
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True)
class SLO:
    ttft_s: float = 2.0
    tpot_s: float = 0.1


#: what ``RollingWindow.summary`` reports over a window with requests in it (and ``errors``
#: when some failed): the metrics an adapter that scores by it can be asked to optimise
WINDOW_METRICS = ("requests", "total_time", "throughput_rps", "throughput_tps", "slo_attainment", "preemptions",
                  *(f"{stat}_{name}" for name in ("ttft", "tpot", "e2e") for stat in ("mean", "p50", "p99")))


class RollingWindow:
    """The requests that finished in the last ``seconds`` (or all of them): the fitness source."""

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self.records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def current(self, now: float) -> list[RequestRecord]:
        if self.seconds is None:
            return self.records
        start = now - self.seconds
        return [r for r in self.records if r.finish >= start]

    def summary(self, slo: SLO = SLO(), now: float | None = None) -> dict[str, float]:
        """Latency percentiles, SLO attainment, throughput and total time over the window."""
        import numpy as np

        records = self.current(now if now is not None else float("inf")) if self.seconds else self.records
        failed = sum(not r.ok for r in records)
        records = [r for r in records if r.ok]
        if not records:
            return {"requests": 0.0, "errors": float(failed)} if failed else {"requests": 0.0}
        ttft = np.array([r.ttft for r in records])
        e2e = np.array([r.e2e for r in records])
        tpot = np.array([r.tpot for r in records if r.output_tokens > 1] or [0.0])
        first = min(r.arrival for r in records)
        last = max(r.finish for r in records)
        span = max(last - first, 1e-9)
        out = {"requests": float(len(records)), "total_time": last - first,
               "throughput_rps": len(records) / span,
               "throughput_tps": sum(r.output_tokens for r in records) / span,
               "slo_attainment": float(np.mean([(r.ttft <= slo.ttft_s and r.tpot <= slo.tpot_s) for r in records])),
               "preemptions": float(sum(r.preemptions for r in records))}
        if failed:
            out["errors"] = float(failed)
        for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
            out[f"mean_{name}"] = float(values.mean())
            out[f"p50_{name}"] = float(np.percentile(values, 50))
            out[f"p99_{name}"] = float(np.percentile(values, 99))
        return out


class PageHinkley:
    """Two-sided Page-Hinkley test for a shift in the mean of a stream.

    Page (1954), Hinkley (1971): accumulate each observation's deviation from the running
    mean, less a tolerance ``delta``; alarm when the accumulated deviation moves more than
    ``threshold`` away from its running extreme. Observations are divided by the mean of
    the first ``warmup`` ones, so ``delta`` and ``threshold`` are relative (0.05 = 5%) and
    one setting serves rates, lengths and SLO attainment alike.
    """

    def __init__(self, delta: float = 0.05, threshold: float = 1.0, warmup: int = 5):
        self.delta, self.threshold, self.warmup = delta, threshold, warmup
        self.reset()

    def reset(self) -> None:
        self.first: list[float] = []
        self.n, self.mean = 0, 0.0
        self.up = self.up_min = 0.0
        self.down = self.down_max = 0.0

    def update(self, value: float) -> bool:
        """Feed one observation; True when the mean has shifted (then the test restarts)."""
        if len(self.first) < self.warmup:
            self.first.append(value)
            if len(self.first) < self.warmup:
                return False
        scale = abs(math.fsum(self.first) / len(self.first)) or 1.0
        x = value / scale
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.up += x - self.mean - self.delta
        self.up_min = min(self.up_min, self.up)
        self.down += x - self.mean + self.delta
        self.down_max = max(self.down_max, self.down)
        if self.up - self.up_min > self.threshold or self.down_max - self.down > self.threshold:
            self.reset()
            return True
        return False


def moved(before: Mapping[str, float], after: Mapping[str, float], factor: float = 1.25) -> list[str]:
    """The names whose value in ``after`` is more than ``factor`` times, or less than 1/``factor``
    of, its value in ``before``: a two-window test.

    Page-Hinkley sets each signal's scale on its first windows and then needs a shift to
    last a while; this compares two stretches outright, for a question it cannot answer
    yet, or not in time: is the stretch before a snapshot the same workload as the snapshot?
    """
    out = []
    for name, b in before.items():
        a = after.get(name)
        if a is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        low, high = sorted((abs(a), abs(b)))
        if high > 0 and (low == 0 or high / low > factor):
            out.append(name)
    return out


class DriftDetector:
    """Which signals of the live windows drifted, with a cooldown between triggers.

    Each named signal (arrival rate, mean prompt length, SLO attainment, ...) has its own
    Page-Hinkley test; a cluster event (GPUs joining or leaving) triggers at once, even while
    cooling down: it is a fact, not noise. After a trigger, ``cooldown`` windows pass before
    the next drift trigger, so one change does not start several evolutions.
    """

    def __init__(self, signals: Iterable[str] = ("rate", "mean_prompt", "slo_attainment"),
                 delta: float = 0.05, threshold: float = 1.0, cooldown: int = 3, warmup: int = 5):
        self.tests = {name: PageHinkley(delta, threshold, warmup) for name in signals}
        self.cooldown = cooldown
        self.quiet = 0

    def update(self, window: Mapping[str, float], cluster_events: int = 0) -> list[str]:
        """Feed one window's values; the names that drifted (empty while cooling down)."""
        drifted = [name for name, test in self.tests.items() if name in window and test.update(float(window[name]))]
        if cluster_events:
            drifted.append("cluster")
        if self.quiet > 0:
            self.quiet -= 1
            drifted = ["cluster"] if cluster_events else []
        if drifted:
            self.quiet = self.cooldown
        return drifted
