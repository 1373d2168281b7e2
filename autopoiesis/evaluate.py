"""The Evaluator: scores programs through an adapter in sandboxed worker processes.

Each (program, snapshot) pair is one task. A worker compiles the program afresh for
every task (no state leaks between tasks, so results do not depend on which worker
ran them), validates it on the slot's examples, and calls ``adapter.evaluate``. A task
may compute for ``Limits.timeout`` seconds of the worker's CPU time, not of the wall
clock, so whether a program times out does not depend on how busy the machine is; the
parent keeps a far wall-clock deadline for a worker that waits instead of computing.
Workers also run under an address-space cap. ``multiprocess.Pool`` cannot kill one hung
task, so this is a thin pool of ``multiprocess.Process`` workers of our own: a worker
that overruns, blows its memory or dies is killed and replaced, and the run goes on.
A failure on a limit is reused only by the Evaluator that met it (``hit_a_limit``).

Snapshots travel to workers as bytes pickled once per ``run`` with the C pickler:
``multiprocess`` pickles messages with dill's pure-Python pickler, which spent 40 ms on
each 70 kB window snapshot the online controller sends, on the evolution plane's clock.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

import dill
import multiprocess
from multiprocess.connection import wait

from . import sandbox
from .metrics import Snapshot, check_metrics


@dataclass(frozen=True)
class Limits:
    """Per-task limits for untrusted code."""

    timeout: float = 10.0  # CPU seconds per (program, snapshot), the worker's own
    memory_mb: int = 1024  # address space a worker may add beyond its start
    wall_seconds: float | None = None  # real time per task; default: three timeouts plus 30 s

    @property
    def wall(self) -> float:
        """The backstop for a task that waits (a user adapter's I/O) rather than computes."""
        return self.wall_seconds if self.wall_seconds is not None else 3 * self.timeout + 30.0


@dataclass(frozen=True)
class Task:
    program_id: str
    source: str
    snapshot: Snapshot

    @property
    def key(self) -> tuple[str, str]:
        return (self.program_id, self.snapshot.key)


# Failures that say more about the limits (or the machine) than about the program.
NO_MEMORY_TO_REPLY = 3  # a worker's exit code when its reply met the memory cap
LIMIT_FAILURES = ("timed out", "memory limit exceeded", "worker ", "CPU time limit exceeded")


def hit_a_limit(error: str | None) -> bool:
    """Whether a task failed on a worker limit: another Evaluator, with other limits, may pass it."""
    return bool(error) and error.startswith(LIMIT_FAILURES)


@dataclass(frozen=True)
class Outcome:
    """The result of one task: metrics, or an error a person can read."""

    program_id: str
    snapshot_key: str
    metrics: dict[str, float] | None
    error: str | None
    seconds: float
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> tuple[str, str]:
        return (self.program_id, self.snapshot_key)


class Cache(Protocol):
    def get(self, key: tuple[str, str]) -> Outcome | None: ...
    def put(self, outcome: Outcome) -> None: ...


class MemoryCache:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], Outcome] = {}

    def get(self, key: tuple[str, str]) -> Outcome | None:
        return self._data.get(key)

    def put(self, outcome: Outcome) -> None:
        self._data[outcome.key] = outcome


class _Worker:
    def __init__(self, ctx, adapter: Any, limits: Limits):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, self.conn, adapter, limits), daemon=True
        )
        self.process.start()
        child_conn.close()
        self.task: Task | None = None
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class Evaluator:
    """A pool of sandboxed workers with per-task deadlines and a result cache."""

    def __init__(self, adapter: Any, workers: int = 1, limits: Limits = Limits(), cache: Cache | None = None):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.adapter = adapter
        self.workers = workers
        self.limits = limits
        self.cache = cache if cache is not None else MemoryCache()
        self._limited: dict[tuple[str, str], Outcome] = {}  # limit failures under this evaluator's limits
        methods = multiprocess.get_all_start_methods()
        self._ctx = multiprocess.get_context("fork" if "fork" in methods else "spawn")
        self._pool: list[_Worker] = []
        self.executed = 0
        self.cache_hits = 0
        self.replaced = 0

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=2)
            worker.kill()
        self._pool = []

    def _fill(self) -> None:
        self._pool = [w for w in self._pool if w.process.is_alive()]
        while len(self._pool) < self.workers:
            self._pool.append(_Worker(self._ctx, self.adapter, self.limits))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._pool.remove(worker)
        self.replaced += 1
        self._pool.append(_Worker(self._ctx, self.adapter, self.limits))

    def healthy(self) -> bool:
        """Every worker process alive, dead ones replaced (tests then score a program to prove it works)."""
        self._fill()
        return all(w.process.is_alive() for w in self._pool)

    # -- work ----------------------------------------------------------------------
    def evaluate(self, tasks: Iterable[Task]) -> dict[tuple[str, str], Outcome]:
        return {o.key: o for o in self.run(tasks)}

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Yield an Outcome per distinct task, cached ones first, the rest as they finish."""
        queue: deque[Task] = deque()
        seen: set[tuple[str, str]] = set()
        for task in tasks:
            if task.key in seen:
                continue
            seen.add(task.key)
            hit = self.cache.get(task.key)
            if hit is not None and hit_a_limit(hit.error):  # the cache may be another run's, with other limits
                hit = self._limited.get(task.key)
            if hit is not None:
                self.cache_hits += 1
                yield Outcome(hit.program_id, hit.snapshot_key, hit.metrics, hit.error, hit.seconds, cached=True)
            else:
                queue.append(task)
        if not queue:
            return
        self._fill()
        packed: dict[str, bytes] = {}  # snapshot key -> pickled snapshot, for this run's tasks
        try:
            while queue or any(w.task for w in self._pool):
                for worker in list(self._pool):
                    if worker.task is None and queue:
                        self._dispatch(worker, queue, packed)
                for outcome in self._collect():
                    self.executed += 1
                    self.cache.put(outcome)
                    if hit_a_limit(outcome.error):
                        self._limited[outcome.key] = outcome
                    yield outcome
        finally:
            # Abandoned mid-run (an error or Ctrl-C in the consumer): drop in-flight work.
            for worker in list(self._pool):
                if worker.task is not None:
                    worker.task = None
                    self._replace(worker)

    def _dispatch(self, worker: _Worker, queue: deque[Task], packed: dict[str, bytes]) -> None:
        task = queue.popleft()
        if task.snapshot.key not in packed:
            packed[task.snapshot.key] = _pack(task.snapshot)
        try:
            worker.conn.send((task.program_id, task.source, packed[task.snapshot.key]))
        except (OSError, ValueError):  # died while idle (e.g. recycled after a MemoryError)
            queue.appendleft(task)
            self._replace(worker)
            return
        worker.task, worker.started = task, time.monotonic()

    def _collect(self) -> list[Outcome]:
        busy = [w for w in self._pool if w.task is not None]
        now = time.monotonic()
        deadline = min(w.started + self.limits.wall for w in busy)
        waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(wait(waitables, timeout=max(0.0, deadline - now)))
        done = []
        for worker in busy:
            task = worker.task
            elapsed = time.monotonic() - worker.started
            if worker.conn in ready or worker.process.sentinel in ready:
                message = None
                try:
                    if worker.conn.poll():
                        message = worker.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    status, payload, seconds = message
                    if status == "ok":
                        done.append(Outcome(task.program_id, task.snapshot.key, payload, None, seconds))
                    else:
                        done.append(Outcome(task.program_id, task.snapshot.key, None, payload, seconds))
                    worker.task = None
                    if status == "fatal":
                        self._replace(worker)
                    continue
                worker.process.join(timeout=1)
                reason = _death_reason(worker.process.exitcode, self.limits)
                done.append(Outcome(task.program_id, task.snapshot.key, None, reason, elapsed))
                worker.task = None
                self._replace(worker)
            elif elapsed >= self.limits.wall:
                done.append(Outcome(
                    task.program_id, task.snapshot.key, None,
                    f"timed out after {self.limits.wall:g} s of wall-clock time, without using its "
                    f"{self.limits.timeout:g} s of CPU time (it waited rather than computed)", elapsed,
                ))
                worker.task = None
                self._replace(worker)
        return done


def _pack(snapshot: Snapshot) -> bytes:
    """The C pickler where it can (plain data: every shipped adapter), dill for the rest."""
    try:
        return pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a user adapter's snapshot holding a lambda or a local class
        return dill.dumps(snapshot)


def _death_reason(exitcode: int | None, limits: Limits) -> str:
    if exitcode is not None and exitcode < 0:
        sig = -exitcode
        if sig == signal.SIGPROF:  # sandbox.cpu_timer's
            return f"timed out after {limits.timeout:g} s of CPU time"
        if sig == signal.SIGKILL:
            return "worker killed (out of memory?)"
        return f"worker crashed ({signal.Signals(sig).name})"
    if exitcode == NO_MEMORY_TO_REPLY:
        return "memory limit exceeded (the worker had none left to send its answer)"
    return f"worker exited unexpectedly (code {exitcode})"


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker if the evolution process dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, parent_conn, adapter: Any, limits: Limits) -> None:
    parent_conn.close()
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the parent decides when a worker ends:
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C, a service manager's stop of the whole group, a closed terminal
    slots = adapter.slots()
    sandbox.apply_limits(limits.memory_mb)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        program_id, source, packed = message
        start = time.perf_counter()
        sandbox.cpu_timer(limits.timeout)
        status, payload = "ok", None
        try:
            snapshot = dill.loads(packed)  # afresh per task: an adapter may change what it is given
            policy = sandbox.compile_policy(source, slots, program_id)
            state = sandbox.state_items(policy)
            sandbox.validate(policy, slots)
            payload = check_metrics(adapter.evaluate(policy, snapshot))
            grown = sandbox.state_items(policy) - state
            if grown > sandbox.STATE_GROWTH_LIMIT:
                status, payload = "error", (
                    f"its state grew by {grown} items over one evaluation (limit {sandbox.STATE_GROWTH_LIMIT}): "
                    "state kept between calls must stay bounded, or a deployed program grows the serving process")
        except MemoryError:
            status, payload = "fatal", "memory limit exceeded"
        except RecursionError:
            status, payload = "error", "recursion too deep"
        except sandbox.Rejected as e:
            status, payload = "error", f"rejected: {e}"
        except BaseException as e:  # untrusted code may raise anything; report it, keep serving
            status, payload = "error", _describe(e)
        sandbox.cpu_timer(0)  # the task's budget is not the reply's
        try:
            conn.send((status, payload, time.perf_counter() - start))
        except MemoryError:
            os._exit(NO_MEMORY_TO_REPLY)
        except (OSError, ValueError):
            return
        if status == "fatal":
            return  # a worker that hit its memory cap may be fragmented: start afresh


def _describe(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:
        text = "<unprintable>"
    text = text if len(text) <= 300 else text[:300] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
