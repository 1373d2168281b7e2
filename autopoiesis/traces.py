"""Request traces on disk: the two CSV formats every adapter's load can come from.

The Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``) and the
``arrived_at,num_prefill_tokens,num_decode_tokens`` format of ``shared/data/traces``.
The simulator replays them in simulated time; the vLLM load generator at real time.
``phased`` and ``rescaled`` make the (arrival, prompt, output) lists the live adapters'
loads replay: a synthetic mix in phases, or a trace fitted to a rate and a model's limits.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """A trace file that cannot be read, or a row of it that is not a request; the message is for the user."""


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival seconds (from 0), prompt and output tokens of a trace file, in either format;
    ``TraceError`` names the first row that is not a request. The arrays are read-only and
    shared: a process reads a file once while it is unchanged (a trace scenario builds its
    workload from the file on every evaluation, and parsing the conversation trace took
    more than 100 ms)."""
    try:
        stat = os.stat(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace: {e}") from None
    return _parsed(str(path), os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parsed(path: str, real_path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``read_trace`` of the file at ``real_path`` as it is at (``mtime_ns``, ``size``);
    ``path`` is the name the caller gave, for messages."""
    try:
        with open(real_path, newline="") as f:  # what the cache is keyed on
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TraceError(f"{path}: cannot read the trace: {e}") from None
    if {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= fields:
        columns, time = ("arrived_at", "num_prefill_tokens", "num_decode_tokens"), float
    elif {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= fields:
        columns, time = ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), _timestamp
    else:
        raise TraceError(f"{path}: unknown trace format (columns {sorted(fields)}); expected "
                         "TIMESTAMP,ContextTokens,GeneratedTokens or arrived_at,num_prefill_tokens,num_decode_tokens")
    if not rows:
        raise TraceError(f"{path}: the trace has no requests")
    try:  # the whole file at once; a row by row pass only to name the first bad row
        t = np.array([time(row[columns[0]]) for _, row in rows])
        p, o = (np.array([float(row[c]) for _, row in rows]) for c in columns[1:])
        ok = bool(np.isfinite(t).all() and ((p >= 0) & (p < np.inf) & (o >= 0) & (o < np.inf)).all())
    except (AttributeError, TypeError, ValueError):  # a short row's missing cell is None
        ok = False
    if not ok:
        for line, row in rows:
            try:
                _request(row, columns, time)
            except ValueError as e:
                cells = ",".join(row[c] or "" for c in columns)
                raise TraceError(f"{path}, line {line}: {cells} is not a request "
                                 f"({', '.join(columns)}): {e}") from None
    order = np.argsort(t, kind="stable")
    t, p, o = t[order] - t[order][0], p[order], o[order]
    for column in (t, p, o):
        column.flags.writeable = False  # shared by every caller in this process
    return t, p, o


def _request(row: dict, columns: tuple[str, str, str], time: Callable[[str], float]) -> tuple[float, float, float]:
    """(arrival, prompt, output) of one row; ValueError says what is wrong with it (a NaN count
    would reach the serving loop as a request of -2**63 tokens, a negative one as one token)."""
    if any(row[c] is None for c in columns):
        raise ValueError(f"it has {len([v for v in row.values() if v is not None])} cells")
    arrival, prompt, output = time(row[columns[0]]), float(row[columns[1]]), float(row[columns[2]])
    if not (math.isfinite(arrival) and 0 <= prompt < math.inf and 0 <= output < math.inf):
        raise ValueError("a time must be finite and token counts >= 0")
    return arrival, prompt, output


def _timestamp(text: str) -> float:
    """Seconds since the epoch of an Azure trace's TIMESTAMP (seven digits of fraction, no zone: UTC)."""
    stamp = datetime.fromisoformat(text.strip()[:26])
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


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
