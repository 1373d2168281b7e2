"""The ledger (tokens, latency, money per call and per run), budgets, record and replay.

Every call goes through a ``Session``: it checks the budget, calls with retries, and
records the prompt, the raw response (or the error) and the usage in the archive's
``llm_calls`` table, keyed by the prompt's hash. ``Session.replay(archive, run)``
answers from that table instead of the network (the k-th call with a given prompt
gets the k-th recorded response), so an LLM-driven run can be reproduced bit for bit.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..archive import Archive, llm_calls, record_llm_call, set_llm_outcome
from .client import Client, Completion, LLMError, RetryPolicy, complete_with_retries

#: USD per million (prompt, completion) tokens; unknown models cost 0 (and the report says so).
PRICES = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
    "o4-mini": (1.10, 4.40), "claude-3-5-haiku-latest": (0.80, 4.00), "claude-3-5-sonnet-latest": (3.00, 15.00),
    "claude-sonnet-4-0": (3.00, 15.00), "claude-opus-4-0": (15.00, 75.00),
}


class BudgetExhausted(LLMError):
    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Budget:
    max_calls: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None
    concurrency: int = 1  # calls in flight at once (a session is safe to share between threads)


@dataclass
class Ledger:
    budget: Budget = field(default_factory=Budget)
    calls: int = 0
    attempts: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def check(self) -> None:
        b = self.budget
        if b.max_calls is not None and self.calls >= b.max_calls:
            raise BudgetExhausted(f"LLM call budget spent ({self.calls} of {b.max_calls})")
        if b.max_tokens is not None and self.tokens >= b.max_tokens:
            raise BudgetExhausted(f"LLM token budget spent ({self.tokens} of {b.max_tokens})")
        if b.max_usd is not None and self.usd >= b.max_usd:
            raise BudgetExhausted(f"LLM money budget spent (${self.usd:.4f} of ${b.max_usd})")

    def charge(self, completion: Completion) -> float:
        price_in, price_out = PRICES.get(completion.model, (0.0, 0.0))
        usd = (completion.prompt_tokens * price_in + completion.completion_tokens * price_out) / 1e6
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.latency_s += completion.latency_s
        self.usd += usd
        return usd


def prompt_hash(system: str, prompt: str) -> str:
    """Key of a call; with the occurrence count, replay finds the same reply for the same question."""
    return hashlib.sha256("\x00".join((system, prompt)).encode()).hexdigest()[:24]


class Session:
    """One run's access to an LLM: budget, retries, ledger, recording (or replay)."""

    def __init__(self, client: Client | None, archive: Archive, run_id: str, budget: Budget = Budget(),
                 retry: RetryPolicy = RetryPolicy(), replay_from: str | None = None, sleep=time.sleep):
        self.client, self.archive, self.run_id = client, archive, run_id
        self.ledger = Ledger(budget)
        self.retry, self.sleep = retry, sleep
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, budget.concurrency))
        self.peak_in_flight, self._in_flight = 0, 0
        self._recorded: dict[tuple[str, int], dict] = {}
        if replay_from:
            for row in llm_calls(archive, replay_from):
                self._recorded[(row["prompt_hash"], row["occurrence"])] = row
            if not self._recorded:
                raise LLMError(f"run {replay_from} has no recorded LLM calls to replay", False)
        self.replaying = bool(replay_from)
        existing = llm_calls(archive, run_id)
        self.seq = max((r["seq"] for r in existing), default=0)
        # a resumed run: earlier calls count against the budget, and the same question
        # (a generation remade after a crash) gets its recorded answer instead of a new call
        self._own = {(r["prompt_hash"], r["occurrence"]): r for r in existing if r["response"] is not None}
        for r in existing:
            self.ledger.calls += 1
            self.ledger.prompt_tokens += r["prompt_tokens"]
            self.ledger.completion_tokens += r["completion_tokens"]
            self.ledger.latency_s += r["latency_s"]
            self.ledger.usd += r["usd"]
        self.model = client.model if client is not None else "replay"

    @classmethod
    def replay(cls, archive: Archive, run_id: str, source_run: str) -> "Session":
        return cls(None, archive, run_id, replay_from=source_run)

    def ask(self, system: str, prompt: str, max_tokens: int = 2048, temperature: float = 0.8) -> tuple[Completion, int]:
        """(completion, call number). Raises LLMError (after retries) or BudgetExhausted."""
        with self._lock:
            key = prompt_hash(system, prompt)
            occurrence = self.seen[key]
            self.seen[key] += 1
            self.seq += 1
            seq = self.seq
        if self.replaying:
            return self._replayed(key, occurrence, seq, system, prompt)
        own = self._own.get((key, occurrence))
        if own is not None:
            return (Completion(own["response"], own["prompt_tokens"], own["completion_tokens"], own["latency_s"],
                               own["model"]), own["seq"])
        with self._lock:
            try:
                self.ledger.check()
            except BudgetExhausted:
                self.seen[key] -= 1  # not asked: a resumed run asks it again
                self.seq -= 1
                raise
        row = {"run": self.run_id, "seq": seq, "prompt_hash": key, "occurrence": occurrence, "model": self.model,
               "system": system, "prompt": prompt, "prompt_tokens": 0, "completion_tokens": 0,
               "latency_s": 0.0, "usd": 0.0, "created": time.time()}

        attempt_errors: list[str] = []

        def on_attempt(error, latency):
            self.ledger.attempts += 1
            if error is not None:
                self.ledger.failures += 1
                attempt_errors.append(str(error))

        try:
            with self._slots:
                with self._lock:
                    self._in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                try:
                    completion = complete_with_retries(self.client, system, prompt, max_tokens, temperature,
                                                       self.retry, self.sleep, on_attempt)
                finally:
                    with self._lock:
                        self._in_flight -= 1
        except LLMError as e:
            row.update(error="; ".join(attempt_errors) or str(e), outcome="call failed")
            with self._lock:
                self.ledger.calls += 1
            record_llm_call(self.archive, row)
            raise
        with self._lock:
            self.ledger.calls += 1
            usd = self.ledger.charge(completion)
        row.update(response=completion.text, error="; ".join(attempt_errors) or None, model=completion.model,
                   prompt_tokens=completion.prompt_tokens,
                   completion_tokens=completion.completion_tokens, latency_s=completion.latency_s, usd=usd)
        record_llm_call(self.archive, row)
        return completion, seq

    def _replayed(self, key, occurrence, seq, system, prompt) -> tuple[Completion, int]:
        recorded = self._recorded.get((key, occurrence))
        if recorded is None:
            raise LLMError("replay: this prompt was not recorded in the source run (the run diverged)", False)
        row = dict(recorded, run=self.run_id, seq=seq, created=time.time(), outcome=None)
        record_llm_call(self.archive, row)
        if recorded["response"] is None:  # the recorded call failed: fail the same way
            raise LLMError(recorded["error"].split("; ")[-1], False)
        completion = Completion(recorded["response"] or "", recorded["prompt_tokens"], recorded["completion_tokens"],
                                recorded["latency_s"], recorded["model"])
        with self._lock:
            self.ledger.calls += 1
            self.ledger.charge(completion)
        return completion, seq

    def outcome(self, seq: int, outcome: str) -> None:
        """What became of a call's reply: 'child <id>', or the reason it was unusable."""
        set_llm_outcome(self.archive, self.run_id, seq, outcome)
