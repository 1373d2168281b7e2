"""In-engine plugin: vLLM's scheduler with its waiting queue ordered by the deployed ``priority``.

Runs inside the vLLM server (``--scheduler-cls autopoiesis_scheduler.PolicyScheduler``
with this folder on PYTHONPATH; ``--vllm-launch ... --plugin`` sets it all up). It
imports only vLLM and, by file path, autopoiesis's sandbox, so it needs nothing
installed in vLLM's environment. Environment:

- ``AUTOPOIESIS_POLICY_FILE``: JSON ``{"version", "program", "source", "epoch_unix"}`` the
  controller replaces atomically (``os.replace``) to publish a program; the scheduler
  checks its modification time when a request arrives and before a scheduling step, at
  most every 50 ms, and swaps the compiled function in one assignment, so a step sees the
  old program or the new one, never a mix.
- ``AUTOPOIESIS_SANDBOX_DIR``: the folder of autopoiesis's ``sandbox.py``.

Until a program is published the plugin changes nothing (per-request priorities from the
router still apply). Each new request's priority is computed as it joins the waiting queue
(vLLM's priority queue then orders by (priority, arrival)), and again for every request
queued or running when a new program is loaded (looked for before each scheduling step, at
most every 50 ms): keys from two programs are on unrelated scales, so a backlog keyed by
the old one could rank wholly ahead of, or behind, the new one's arrivals. Re-keying is all
or nothing: if the program fails on one request, or the backlog takes over
``REKEY_BUDGET_S``, the queue keeps its keys. A withdrawn program gives every request its
own priority back. Any failure of the program (an exception, a non-finite value, 50 ms of
computing without an answer, a program that does not compile) drops it until the next one
is published: the queue is first come, first served for the requests that arrive meanwhile
(priority 0), and each one is counted. The deadline is the program thread's CPU time,
looked at by a real-time alarm: while the thread is not running (the machine stalled,
another thread holds the GIL) the call goes on, and it is counted as a stall. A stall past
1 s gives that one call up (FCFS, counted as a fallback too) and keeps the program. Counts
go to ``AUTOPOIESIS_POLICY_FILE.status-PID`` for the controller to read.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
import types

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue

DEADLINE_S = 0.05  # CPU time the program's thread may spend on one request
STALL_CAP_S = 1.0  # real time after which a call is given up even if its thread hardly ran
RECHECK_S = 0.01  # after the first alarm, how often the deadline is looked at again
CHECK_EVERY_S = 0.05
REKEY_BUDGET_S = 0.25  # real time one re-keying of the backlog may hold the engine's step


def _sandbox():
    """autopoiesis's sandbox module, loaded by path under a private package name (no install needed)."""
    name = "_autopoiesis_sandbox"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.environ["AUTOPOIESIS_SANDBOX_DIR"]]
        sys.modules[name] = package
    return importlib.import_module(name + ".sandbox"), importlib.import_module(name + ".program")


class QueueOrder:
    """The published program's priority for each new request: reloading, deadline, fallback, counts."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._status_path = f"{path}.status-{os.getpid()}"
        self._fn = None
        self._mtime = None
        self._checked_at = 0.0
        self._written_at = 0.0
        self._epoch = time.time()
        self._version = 0
        self._program = ""
        self._error = ""
        self._calls = self._fallbacks = self._stalls = 0
        self._ids = 0  # the program sees each request under one id, at arrival and when re-keyed
        self._rekeys = self._rekeyed = self._rekeys_given_up = 0
        self._loaded = False  # a program was loaded or withdrawn since the last re-keying
        sandbox, program = _sandbox()
        self._compile = sandbox.compile_policy
        self._slots = [program.PolicySlot(name="priority", params=("request", "now"), doc="", returns=(int, float))]
        self._deadline = sandbox.CpuDeadline(DEADLINE_S, STALL_CAP_S, RECHECK_S)
        self._deadline_passed = sandbox.DeadlinePassed
        self._reload()

    def __call__(self, request) -> float | None:
        """The request's priority (None: no program published, the request keeps its own)."""
        self._reload()
        value = self._priority(request)
        self._write_status(force=True)  # a few bytes per request: the controller's counts stay current
        return value

    def changed(self) -> bool:
        """Whether a program was loaded or withdrawn since the last call (looks at most every 50 ms)."""
        self._reload()
        changed, self._loaded = self._loaded, False
        return changed

    def rekey(self, requests: list) -> bool:
        """Give ``requests`` (queued and running) the loaded program's priority: all or none.

        With no program (withdrawn) each gets back the priority it came with. The new keys
        are computed first and set only if every request got one from the program within
        ``REKEY_BUDGET_S``: a failure (which drops the program, as on arrival) or a backlog
        too long to key in time leaves the queue as it was, never half in each order.
        """
        if not requests:
            return False
        if self._fn is None:
            if self._program:  # dropped, not withdrawn: arrivals are FCFS, the backlog keeps its keys
                return False
            for request in requests:
                request.priority = getattr(request, "autopoiesis_own_priority", request.priority)
            return True
        fn, fallbacks, started = self._fn, self._fallbacks, time.monotonic()
        keys = []
        for request in requests:
            if time.monotonic() - started > REKEY_BUDGET_S:
                self._rekeys_given_up += 1
                break
            keys.append(self._priority(request))
            if self._fn is not fn or self._fallbacks != fallbacks:  # it failed on this one: nothing changes
                break
        else:
            for request, key in zip(requests, keys):
                request.priority = key
            self._rekeys += 1
            self._rekeyed += len(requests)
        self._write_status(force=True)
        return len(keys) == len(requests) and self._fallbacks == fallbacks

    # -- publishing -----------------------------------------------------------------------
    def _reload(self) -> None:
        now = time.monotonic()
        if not self._path or now - self._checked_at < CHECK_EVERY_S:
            return
        self._checked_at = now
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            with open(self._path) as f:
                published = json.load(f)
            if not published.get("source"):  # withdrawn: requests keep their own priority again
                self._fn, self._program, self._error = None, "", ""
                self._version = published.get("version", 0)
                self._loaded = True
                self._write_status(force=True)
                return
            policy = self._compile(published["source"], self._slots, published.get("program", ""))
            fn = policy.functions.get("priority")
            self._version, self._program = published.get("version", 0), published.get("program", "")
            self._epoch = float(published.get("epoch_unix", self._epoch))
            self._error = "" if fn else "the program has no priority function"
            self._fn = fn  # one assignment: the swap is atomic for the scheduler
            self._loaded = fn is not None
        except Exception as e:  # noqa: BLE001 - a bad publication leaves FCFS, never a dead engine
            self._fn, self._error = None, f"cannot load the program: {type(e).__name__}: {e}"[:300]
        self._write_status(force=True)

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._path or (not force and now - self._written_at < 0.5):  # noqa: SIM114
            return
        self._written_at = now
        status = {"version": self._version, "program": self._program, "calls": self._calls,
                  "fallbacks": self._fallbacks, "stalls": self._stalls, "error": self._error, "pid": os.getpid(),
                  "rekeys": self._rekeys, "rekeyed": self._rekeyed, "rekeys_given_up": self._rekeys_given_up}
        tmp = self._status_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(status, f)
            os.replace(tmp, self._status_path)
        except OSError:
            pass

    # -- the queue order ------------------------------------------------------------------
    def _priority(self, request) -> float | None:
        """The program's priority; None before any program is published (the request's own stays)."""
        fn = self._fn
        if fn is None:
            if not self._program:
                return None
            self._calls += 1  # published but dropped: this request is served FCFS, which counts
            self._fallbacks += 1
            return 0.0
        self._calls += 1
        rid = getattr(request, "autopoiesis_id", None)
        if rid is None:
            self._ids += 1
            rid = request.autopoiesis_id = self._ids
        arrival = request.arrival_time - self._epoch
        view = types.SimpleNamespace(id=rid, arrival=arrival, prompt_tokens=request.num_prompt_tokens,
                                     generated=request.num_output_tokens)
        deadline = self._deadline
        try:
            with deadline:
                value = float(fn(view, time.time() - self._epoch))
            if not math.isfinite(value):
                raise ValueError(f"priority {value} is not finite")
            self._stalls += deadline.stalled  # past the deadline in real time, not in computing: it answered
            return value
        except (Exception, self._deadline_passed) as e:  # noqa: BLE001 - untrusted code: FCFS until the next program
            self._fallbacks += 1
            timed_out = isinstance(e, self._deadline_passed)
            if timed_out and deadline.computed < deadline.cpu_s:
                self._stalls += 1  # given up at the cap, the program hardly ran: a stall, it stays
                self._write_status(force=True)
                return 0.0
            self._fn = None
            self._error = "timed out" if timed_out else f"{type(e).__name__}: {e}"[:300]
            self._write_status(force=True)
            return 0.0


class PolicyScheduler(AsyncScheduler):
    """vLLM's scheduler, its waiting queue ordered by ``QueueOrder``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.policy != SchedulingPolicy.PRIORITY:  # the program's order needs the priority queue
            self.policy = SchedulingPolicy.PRIORITY
            self.waiting = create_request_queue(self.policy)
            self.kv_holding_waiting = create_request_queue(self.policy)
        self._order = QueueOrder(os.environ.get("AUTOPOIESIS_POLICY_FILE", ""))

    def add_request(self, request) -> None:
        if request.request_id not in self.requests:
            own = request.priority
            value = self._order(request)
            if value is not None:
                request.autopoiesis_own_priority = own  # given back if the program is withdrawn
                request.priority = value
        super().add_request(request)

    def schedule(self, *args, **kwargs):
        if self._order.changed():
            self._rekey()
        return super().schedule(*args, **kwargs)

    def _rekey(self) -> None:
        """Key every queued and running request with the program just loaded, and restore the heaps."""
        queues = [q for q in (self.waiting, self.kv_holding_waiting) if q]
        queued = [request for q in queues for request in q]
        if not self._order.rekey(queued + list(self.running)):
            return
        for q in queues:  # priorities changed under the heap: take its requests out and put them back
            mine = list(q)
            q.remove_requests(mine)
            for request in mine:
                q.add_request(request)
