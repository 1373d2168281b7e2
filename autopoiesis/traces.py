"""Request traces on disk: the two CSV formats every adapter's load can come from.

The Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``) and the
``arrived_at,num_prefill_tokens,num_decode_tokens`` format of ``shared/data/traces``.
The simulator replays them in simulated time; the vLLM load generator at real time.
``phased`` and ``rescaled`` make the (arrival, prompt, output) lists the live adapters'
loads replay: a synthetic mix in phases, or a trace fitted to a rate and a model's limits.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

import numpy as np


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival seconds (from 0), prompt and output tokens of a trace file, in either format."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        rows = list(reader)
    if {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= fields:
        t = np.array([float(r["arrived_at"]) for r in rows])
        p = np.array([float(r["num_prefill_tokens"]) for r in rows])
        o = np.array([float(r["num_decode_tokens"]) for r in rows])
    elif {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= fields:
        stamps = [datetime.fromisoformat(r["TIMESTAMP"].strip()[:26]) for r in rows]
        t = np.array([(s - stamps[0]).total_seconds() for s in stamps])
        p = np.array([float(r["ContextTokens"]) for r in rows])
        o = np.array([float(r["GeneratedTokens"]) for r in rows])
    else:
        raise ValueError(f"{path}: unknown trace format (columns {sorted(fields)}); expected "
                         "TIMESTAMP,ContextTokens,GeneratedTokens or arrived_at,num_prefill_tokens,num_decode_tokens")
    if not len(t):
        raise ValueError(f"{path}: the trace has no requests")
    order = np.argsort(t, kind="stable")
    t, p, o = t[order], p[order], o[order]
    return t - t[0], p, o


#: (prompt median, sigma, output median, sigma) of a lognormal request class
Lengths = tuple[float, float, float, float]


def phased(phases, rate: float, duration: float, seed: int, short: Lengths, long: Lengths,
           max_prompt: int, max_output: int, min_output: int = 2) -> list[tuple[float, int, int]]:
    """Poisson arrivals in phases ``(share of duration, rate factor, share of long requests)``."""
    rng = np.random.default_rng(seed)
    out, start = [], 0.0
    for share, factor, long_share in phases:
        span = share * duration
        n = rng.poisson(rate * factor * span)
        for t in np.sort(rng.uniform(start, start + span, n)):
            pm, ps, om, os_ = long if rng.uniform() < long_share else short
            out.append((float(t), int(np.clip(rng.lognormal(math.log(pm), ps), 1, max_prompt)),
                        int(np.clip(rng.lognormal(math.log(om), os_), min_output, max_output))))
        start += span
    return out


def rescaled(path: Path, rate: float, duration: float, token_scale: float, max_prompt: int, max_output: int,
             min_output: int = 2) -> list[tuple[float, int, int]]:
    """A trace's first ``duration`` seconds after scaling time to ``rate`` and tokens by ``token_scale``."""
    t, p, o = read_trace(Path(path))
    t = t / (rate / (len(t) / max(t[-1], 1e-9)))
    keep = t < duration
    return [(float(a), int(np.clip(round(x * token_scale), 1, max_prompt)),
             int(np.clip(round(y * token_scale), min_output, max_output))) for a, x, y in zip(t[keep], p[keep], o[keep])]
