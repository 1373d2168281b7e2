"""Workloads: seeded generators with time-varying rate and length mix, and real traces.

Two request classes make up a mix: short chat (prompts around 500 tokens, outputs
around 200) and long context (prompts around 2,500, outputs around 120). A generator
draws non-homogeneous Poisson arrivals by thinning; its rate follows a pattern
(constant, diurnal, bursts) and its share of long-context requests can shift.
Traces: the Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)
and the ``arrived_at,num_prefill_tokens,num_decode_tokens`` format, time-scaled to a
target rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autopoiesis.traces import read_trace

CLASSES = {
    # (prompt median, prompt sigma, output median, output sigma)
    "short": (500.0, 0.8, 200.0, 0.7),
    "long": (2500.0, 0.4, 120.0, 0.6),
}


def rate_at(spec: Mapping[str, Any], t: np.ndarray) -> np.ndarray:
    base = float(spec["rate"])
    pattern = spec.get("pattern", "constant")
    if pattern == "constant":
        return np.full_like(t, base)
    if pattern == "diurnal":
        amplitude, period = float(spec.get("amplitude", 0.6)), float(spec.get("period_s", 600.0))
        return base * (1.0 + amplitude * np.sin(2 * math.pi * t / period - math.pi / 2))
    if pattern == "burst":
        rate = np.full_like(t, base)
        for start, length, factor in spec.get("bursts", []):
            rate = np.where((t >= start) & (t < start + length), base * factor, rate)
        return rate
    raise ValueError(f"unknown rate pattern '{pattern}' (constant, diurnal, burst)")


def long_share_at(spec: Mapping[str, Any], t: np.ndarray) -> np.ndarray:
    share = np.full_like(t, float(spec.get("long_share", 0.1)))
    for at, value in spec.get("shifts", []):
        share = np.where(t >= at, float(value), share)
    return share


def generate(spec: Mapping[str, Any], duration: float, seed: int, max_context: int) -> list[tuple[float, int, int]]:
    """(arrival, prompt tokens, output tokens), sorted by arrival."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, duration, 4097)
    peak = float(rate_at(spec, grid).max()) * 1.05
    count = rng.poisson(peak * duration)
    times = np.sort(rng.uniform(0.0, duration, count))
    keep = rng.uniform(0.0, peak, count) < rate_at(spec, times)
    times = times[keep]
    is_long = rng.uniform(size=len(times)) < long_share_at(spec, times)
    prompts = np.empty(len(times))
    outputs = np.empty(len(times))
    for name, mask in (("short", ~is_long), ("long", is_long)):
        pm, ps, om, os_ = CLASSES[name]
        n = int(mask.sum())
        prompts[mask] = rng.lognormal(math.log(pm), ps, n)
        outputs[mask] = rng.lognormal(math.log(om), os_, n)
    return _clip(times, prompts, outputs, max_context)


def _clip(times, prompts, outputs, max_context: int) -> list[tuple[float, int, int]]:
    prompts = np.clip(np.round(prompts), 1, max_context // 2).astype(int)
    outputs = np.clip(np.round(outputs), 1, max_context // 2).astype(int)
    return list(zip(np.asarray(times, dtype=float).tolist(), prompts.tolist(), outputs.tolist()))  # Python floats and ints


def from_trace(spec: Mapping[str, Any], path: Path, duration: float, seed: int, max_context: int):
    """A window of a trace, time-scaled so its mean rate is ``rate``; the seed picks the window."""
    t, p, o = read_trace(path)
    native_rate = len(t) / max(t[-1], 1e-9)
    scale = float(spec["rate"]) / native_rate  # >1 compresses time
    scaled = t / scale
    span = scaled[-1]
    rng = np.random.default_rng(seed)
    start = float(rng.uniform(0.0, max(0.0, span - duration)))
    mask = (scaled >= start) & (scaled < start + duration)
    return _clip(scaled[mask] - start, p[mask], o[mask], max_context)
