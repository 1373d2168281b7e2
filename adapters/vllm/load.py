"""Open-loop load for the router: named workloads sized for a small model, or a real trace.

Arrivals are fixed in advance (Poisson by thinning, or a trace's timestamps scaled to a
target rate) and sent at real time whatever the answers do: a slow policy meets the
same load as a fast one. Prompts are token ids, so the server sees exactly the
prompt length the trace says; ``ignore_eos`` with ``min_tokens`` makes it generate
exactly the output length.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from autopoiesis.traces import phased, rescaled

# name: (description, phases: (duration s, rate req/s, share of long prompts))
LOADS = {
    "steady": ("constant rate, 20% long prompts", [(1.0, 1.0, 0.2)]),
    "shift": ("the rate doubles and long prompts triple halfway", [(0.5, 0.7, 0.1), (0.5, 1.4, 0.3)]),
    "burst": ("a burst at four times the rate in the middle fifth", [(0.4, 0.8, 0.2), (0.2, 3.2, 0.2), (0.4, 0.8, 0.2)]),
}
SHORT, LONG = (48, 0.5, 24, 0.5), (600, 0.3, 16, 0.4)  # (prompt median, sigma, output median, sigma)
MAX_PROMPT, MAX_OUTPUT = 2048, 256  # lengths are cut to these (the adapter cuts prompts to the servers' context)


@dataclass
class Load:
    """(arrival s, prompt tokens, output tokens) to replay, sorted."""

    name: str
    requests: list[tuple[float, int, int]]
    description: str = ""

    @property
    def duration(self) -> float:
        return self.requests[-1][0] if self.requests else 0.0


def named(name: str, rate: float = 2.0, duration: float = 120.0, seed: int = 0,
          max_prompt: int = MAX_PROMPT, max_output: int = MAX_OUTPUT) -> Load:
    if name not in LOADS:
        raise ValueError(f"unknown load '{name}' (known: {', '.join(LOADS)}; or give --trace FILE)")
    description, phases = LOADS[name]
    out = phased(phases, rate, duration, seed, SHORT, LONG, max_prompt, max_output)
    return Load(name, out, f"{description}: {rate:g} req/s base, {duration:.0f} s")


def from_trace(path: str | Path, rate: float = 2.0, duration: float = 120.0, token_scale: float = 1.0,
               max_prompt: int = MAX_PROMPT, max_output: int = MAX_OUTPUT) -> Load:
    """The trace's first ``duration`` seconds after scaling time to ``rate`` and tokens by ``token_scale``."""
    requests = rescaled(Path(path), rate, duration, token_scale, max_prompt, max_output)
    return Load(Path(path).stem, requests, f"trace {Path(path).name} at {rate:g} req/s, tokens x{token_scale:g}")


@dataclass
class Outcome:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


async def replay(load: Load, url: str, model: str, time_scale: float = 1.0, vocab: int = 300,
                 stop: asyncio.Event | None = None) -> Outcome:
    """Send ``load`` to the OpenAI-compatible ``url`` (…/v1) open-loop; ``time_scale`` < 1 compresses time."""
    outcome = Outcome()
    rng = np.random.default_rng(len(load.requests))
    start = time.monotonic()

    async def one(session: aiohttp.ClientSession, prompt: int, output: int) -> None:
        body = {"model": model, "prompt": rng.integers(3, vocab, prompt).tolist(), "max_tokens": output,
                "min_tokens": output, "ignore_eos": True, "stream": True, "temperature": 0.0}
        try:
            async with session.post(url.rstrip("/") + "/completions", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                async for line in resp.content:
                    if line.startswith(b"data:") and b'"error"' in line[:20]:
                        raise RuntimeError(json.loads(line[5:])["error"]["message"])
            outcome.ok += 1
        except Exception as e:  # noqa: BLE001 - counted; the load goes on
            outcome.failed += 1
            outcome.errors.append(f"{type(e).__name__}: {e}"[:200])

    # open-loop means no cap on requests in flight: with aiohttp's default of 100 connections the
    # 101st waited for one to finish, and a load past capacity arrived late by up to 21 s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=3600)) as session:
        tasks = []
        for at, prompt, output in load.requests:
            delay = start + at * time_scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            outcome.sent += 1
            tasks.append(asyncio.create_task(one(session, prompt, output)))
        await asyncio.gather(*tasks)
    return outcome
