"""Request traces on disk: the two CSV formats every adapter's load can come from.

The Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``) and the
``arrived_at,num_prefill_tokens,num_decode_tokens`` format of ``shared/data/traces``.
The simulator replays them in simulated time; the vLLM load generator at real time.
"""

from __future__ import annotations

import csv
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
    order = np.argsort(t, kind="stable")
    t, p, o = t[order], p[order], o[order]
    return t - t[0], p, o
