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
router still apply). Each new request's priority is computed once, as it joins the waiting
queue, and set to (order epoch, key): vLLM's priority queue then orders by (priority,
arrival). The epoch counts the changes of order (a program with a new ``priority`` loaded,
withdrawn or dropped), so the requests queued before a change keep their order, ahead of
every later arrival: keys of two programs are on unrelated scales, and one queue keyed by
both could rank the backlog wholly ahead of, or behind, the new program's arrivals. A
program whose ``priority`` is the loaded one's (``slot_code_id``: another slot or a
docstring changed) keys on the same scale and keeps one queue. A withdrawn program leaves
new requests their own priority.

The program runs in a decision process of its own (autopoiesis's ``decision_process``,
loaded by path like the sandbox, its child started with vLLM's Python): no call of it, not
even one C call that never ends or builds a gigabyte, can hold or grow vLLM's engine
process. Any failure of the program (an exception, a non-finite value, 50 ms of computing
without an answer, 0.5 s of CPU in one C call, which ends its process, state past the
sandbox's limit, a program that does not compile) drops it until the next one is
published: the queue is first come, first served for the requests that arrive meanwhile
(priority 0), and each one is counted. The deadline is CPU time, so a stalled machine does
not drop a program; a call with no answer after 1 s is given up (FCFS, counted as a
fallback and a stall) and the program kept. Counts go to
``AUTOPOIESIS_POLICY_FILE.status-PID`` for the controller to read: a failure or a change of
program is written at once, the counts of plain calls by a thread at most 50 ms later (a
write per request cost more than the program's call).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import threading
import time
import types
import weakref

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue

DEADLINE_S = 0.05  # CPU time the program may spend on one request
STALL_CAP_S = 1.0  # real time after which a call is given up (the program kept)
CHECK_EVERY_S = 0.05
STATUS_EVERY_S = 0.05  # most a status file lags the counts of plain calls
STATE_CHECK_EVERY = 4096  # requests between two measures of the program's state (the sandbox's STATE_LIMIT)


def _sandbox():
    """autopoiesis's sandbox, program and decision_process modules, loaded by path under a
    private package name (no install needed)."""
    name = "_autopoiesis_sandbox"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.environ["AUTOPOIESIS_SANDBOX_DIR"]]
        sys.modules[name] = package
    return (importlib.import_module(name + ".sandbox"), importlib.import_module(name + ".program"),
            importlib.import_module(name + ".decision_process"))


class QueueOrder:
    """The published program's priority for each new request: reloading, deadline, fallback, counts."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._status_path = f"{path}.status-{os.getpid()}"
        self._fn = None
        self._mtime = None
        self._checked_at = 0.0
        self._status_lock = threading.Lock()
        self._counted = False  # counts changed since the status was written
        self._epoch = time.time()
        self._version = 0
        self._program = ""
        self._error = ""
        self._calls = self._fallbacks = self._stalls = 0
        self._ids = 0
        self._order_epoch = 0  # changes of order so far: a new priority loaded, a program withdrawn or dropped
        self._order_code = ""  # the loaded program's priority code (program.slot_code_id)
        self._sandbox, program, self._decisions = _sandbox()
        self._code_id = program.slot_code_id
        self._policy = None
        self._slots = [program.PolicySlot(name="priority", params=("request", "now"), doc="", returns=(int, float))]
        if path:
            self._decisions.start_spares()  # the first publication need not wait for Python to start
            threading.Thread(target=_keep_status, args=(weakref.ref(self),), name="autopoiesis-status",
                             daemon=True).start()
        self._reload()

    def __call__(self, request) -> tuple[int, float]:
        """The request's priority: (order epoch, the program's key, or the request's own if none)."""
        self._reload()
        value = self._priority(request)
        self._counted = True  # written by the status thread within STATUS_EVERY_S
        return self._order_epoch, request.priority if value is None else value

    def look(self) -> None:
        """Load a newly published program (at most every 50 ms), so the status stays current."""
        self._reload()

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
                self._swap(None)
                self._program, self._error, self._order_code = "", "", ""
                self._version = published.get("version", 0)
                self._order_epoch += 1
                self.write_status()
                return
            policy = self._decisions.IsolatedPolicy(
                published["source"], self._slots, published.get("program", ""), timeout_s=DEADLINE_S,
                wait_s=STALL_CAP_S, state_check_every=STATE_CHECK_EVERY, state_limit=self._sandbox.STATE_LIMIT)
            self._version, self._program = published.get("version", 0), published.get("program", "")
            self._epoch = float(published.get("epoch_unix", self._epoch))
            self._error = "" if "priority" in policy else "the program has no priority function"
            order = self._code_id(published["source"], "priority")
            # the loaded program's priority again (another slot or a docstring changed): one scale of keys
            kept = self._fn is not None and "priority" in policy and order == self._order_code
            self._order_code = order
            self._swap(policy)
        except Exception as e:  # noqa: BLE001 - a bad publication leaves FCFS, never a dead engine
            self._swap(None)
            self._error = f"cannot load the program: {type(e).__name__}: {e}"[:300]
            self._order_code, kept = "", False
        if not kept:
            self._order_epoch += 1
        self.write_status()

    def _swap(self, policy) -> None:
        """Serve ``policy`` (None: none) from now on and end the replaced one's process. One
        assignment of ``_fn``, which the scheduler reads: a step sees one program or the other."""
        old, self._policy = self._policy, policy
        self._fn = getattr(policy, "priority", None)
        if old is not None:
            old.close()

    def write_status(self) -> None:
        """Write the counts, the program and its error to the status file now (either thread)."""
        if not self._path:
            return
        with self._status_lock:
            self._counted = False  # before the counts are read: a call counted meanwhile is written next time
            status = {"version": self._version, "program": self._program, "calls": self._calls,
                      "fallbacks": self._fallbacks, "stalls": self._stalls, "error": self._error,
                      "pid": os.getpid(), "order_epoch": self._order_epoch}
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
        self._ids += 1  # the program's view of a request: asked once, when it arrives
        rid = self._ids
        arrival = request.arrival_time - self._epoch
        view = types.SimpleNamespace(id=rid, arrival=arrival, prompt_tokens=request.num_prompt_tokens,
                                     generated=request.num_output_tokens)
        try:
            value = float(fn(view, time.time() - self._epoch))
            if not math.isfinite(value):
                raise ValueError(f"priority {value} is not finite")
            return value
        except self._decisions.GaveUp:  # no answer in STALL_CAP_S: a stall; the program stays
            self._fallbacks += 1
            self._stalls += 1
            self.write_status()
            return 0.0
        except (Exception, self._sandbox.DeadlinePassed) as e:  # noqa: BLE001 - untrusted code: FCFS until the next program
            self._fallbacks += 1
            self._swap(None)
            self._order_epoch += 1  # this request and the later ones are FCFS, after the backlog
            # the decision process words a program's failure ("ZeroDivisionError: ...", "retired: ...")
            self._error = ("timed out" if isinstance(e, self._sandbox.DeadlinePassed)
                           else str(e) if isinstance(e, self._decisions.PolicyError) else f"{type(e).__name__}: {e}")[:300]
            self.write_status()
            return 0.0


def _keep_status(order_ref) -> None:
    """The status thread: writes an order's counts when they changed, every STATUS_EVERY_S,
    until the order is gone."""
    while True:
        time.sleep(STATUS_EVERY_S)
        order = order_ref()
        if order is None:
            return
        if order._counted:
            order.write_status()
        del order


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
            request.priority = self._order(request)
        super().add_request(request)

    def schedule(self, *args, **kwargs):
        self._order.look()
        return super().schedule(*args, **kwargs)
