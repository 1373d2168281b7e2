"""A deployed program in a process of its own: a C call that never ends costs that process.

In the serving process a deployed program's call has a CPU deadline that acts between
bytecodes (``sandbox.CpuDeadline``). One long C call (``max`` comparing
``[[0] * 10**6] * 10**5``, item by item) runs no bytecode for as long as it takes, and one that builds a huge object
(``[0] * 10**9``) takes the serving process's memory; a language-level sandbox cannot bound
either. ``IsolatedPolicy`` runs the program in a child process instead, under the same
deadline, plus the kernel's: a CPU timer whose default action ends the child when one call
has computed for ``kill_cpu_s``, and an address-space cap. The serving thread sends each
call's inputs through a pipe and waits at most ``wait_s`` for the answer; anything else
(a timeout, an error, a child that died) is an exception the ``HotPath`` answers with the
incumbent's decision. A child that died, or whose state outgrew ``sandbox.STATE_LIMIT``,
is lost: its calls fall back from then on, counted, and the Guard sees them.

The price is a pipe round trip per decision (140-230 us on 2-core VMs whose bare round
trip takes 85-95 us: ``benchmarks/decision_overhead.py``), so it suits live systems that
decide per request, not a simulator deciding a hundred thousand times a second. Children
are started ahead (``SPARES``), so a deployment does not wait for Python to start, and the
process management itself (starting the next spares, reaping a child that was ended) runs
on a helper thread: the thread that deploys serves too (the router's loop, vLLM's
scheduler), and a fork and exec, or a wait for a killed child to release its memory,
waits on the kernel for as long as the kernel takes. Inputs
travel by pickle, so they must be picklable objects of importable classes (the shipped
adapters' views are namedtuples, dataclasses and ``SimpleNamespace``s), and a program sees
copies: it cannot change the caller's objects.
It needs only the sandbox: vLLM's in-engine plugin loads it by path, with no autopoiesis
installed, and its children start the same way (``_command``). ``Worker`` is the same kind
of child for trusted work that calls a program too often for a round trip per call (the
vLLM twin's replays of a live window): the whole job goes there.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable

from . import sandbox
from .program import PolicyError, PolicySlot

START_S = 60.0  # the child's start (imports and the program's compile), on a busy machine
STATE_CHECK_EVERY = 4096  # calls between two measures of the program's state (as HotPath's)
IDLE_LOOK_S = 1.0  # how often an idle child looks whether the process that started it is gone

SPARES = 2  # children started ahead: a deployment isolates two programs (the new one, the incumbent)
_spare: list[tuple] = []  # children started ahead, waiting for their program (see _take_child), oldest first
_starting = [0]  # spares being started now (they count towards SPARES)
_spare_lock = threading.Lock()
_helper: list = [None, 0]  # this process's helper thread's job queue, and the process it belongs to
_helper_lock = threading.RLock()  # re-entrant: a collection inside may run a child's finalizer, which ends it here


class GaveUp(sandbox.DeadlinePassed):
    """The caller stopped waiting: no answer came in ``wait_s`` (a stalled machine, or a C call
    its CPU limit has not ended yet). The program is kept; its late answer is dropped."""


class _Child:
    """A started child and its pipes: one message out, its answer back within ``wait_s``.

    An answer to a message given up on comes first when it comes: it is dropped. A child
    that died, or said it is ``lost``, is lost for good: every later message fails at once.
    """

    def __init__(self, wait_s: float):
        self.wait_s, self.lost, self._sent, self._received = wait_s, "", 0, 0
        self._process, self._to, self._from = _take_child()
        self._finalize = weakref.finalize(self, _end, self._process, self._to, self._from)
        self._starting()  # "up": Python started and the sandbox imported

    def _starting(self) -> tuple[str, Any]:
        """The child's next message while it starts."""
        try:
            if self._from.poll(START_S):
                return self._from.recv()
            why = f"did not start in {START_S:.0f} s"
        except (EOFError, OSError):
            why = f"{self._death()} before it started"
        self.close()
        raise PolicyError(f"its decision process {why}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        """End the child (idempotent; also done when this is collected, or at exit)."""
        self._finalize()

    def _ask(self, message: bytes) -> tuple[str, Any]:
        """Send ``message`` and return the child's answer to it; ``GaveUp`` when it has not
        come in ``wait_s``, ``PolicyError`` once the child is lost."""
        if self.lost:
            raise PolicyError(self.lost)
        try:
            if self._sent > self._received and not self._answers(0.0):
                # still computing a message given up on (a C call, on a machine too busy for its
                # CPU limit to have come yet): fail at once rather than wait again
                raise GaveUp()
            self._to.send_bytes(message)
            self._sent += 1
            if not self._answers(self.wait_s):
                raise GaveUp()
            return self._last
        except (EOFError, OSError):
            self._lose(f"its decision process {self._death()}")

    def _answers(self, wait_s: float) -> bool:
        """Read answers until the one to the last message sent (in ``_last``); False if it has
        not come in ``wait_s``. Answers to messages given up on come first: they are dropped."""
        while self._received < self._sent:
            if not self._from.poll(wait_s):
                return False
            self._last = self._from.recv()
            self._received += 1
            if self._last[0] == "lost":  # it ended itself (its state outgrew the cap)
                self._lose(self._last[1])
        return True

    def _lose(self, why: str) -> None:
        self.lost = why
        self.close()
        raise PolicyError(why)

    def _death(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code == -signal.SIGPROF:
            return "computed past its CPU limit in one call (a C call no deadline could stop) and was ended"
        if code == -signal.SIGKILL:
            return "was killed (out of memory?)"
        return f"exited with code {code}"


class IsolatedPolicy(_Child):
    """A program compiled and called in a child process; duck-types ``sandbox.Policy``.

    ``timeout_s``: CPU time per call, as on the serving thread (the child's ``CpuDeadline``).
    ``kill_cpu_s``: CPU time after which one call ends the child, for C calls the deadline
    cannot stop. ``wait_s``: real time the caller waits for one answer before it falls back
    (the program is kept; its late answer is dropped). ``memory_mb``: the child's address
    space beyond what it holds after its first call's inputs arrive. ``state_check_every`` calls
    apart, the child measures the program's state and retires it past ``state_limit`` items.
    """

    def __init__(self, source: str, slots: Iterable[PolicySlot], program_id: str = "", timeout_s: float = 0.05,
                 kill_cpu_s: float = 0.5, wait_s: float = 1.0, memory_mb: int = 1024,
                 state_check_every: int = STATE_CHECK_EVERY, state_limit: int | None = None):
        slots = list(slots)
        sandbox.check(source, slots)  # a rejected program never starts a process
        self.program_id, self.source, self.namespace = program_id, source, {}
        super().__init__(wait_s)
        light = [PolicySlot(s.name, tuple(s.params), "", returns=s.returns) for s in slots]
        state_limit = sandbox.STATE_LIMIT if state_limit is None else state_limit
        self._to.send(("program", source, light, program_id, timeout_s, kill_cpu_s, memory_mb, state_check_every,
                       state_limit))
        kind, value = self._starting()
        if kind == "rejected":
            self.close()
            raise sandbox.Rejected(value)
        self.functions = {name: self._caller(name) for name in value}
        for name, fn in self.functions.items():
            setattr(self, name, fn)

    def __contains__(self, slot: str) -> bool:
        return slot in self.functions

    def _caller(self, slot: str):
        def call(*args):
            return self._call(slot, args)

        call.__name__ = slot
        call.isolated = True  # the HotPath puts no deadline of its own around the wait
        return call

    def _call(self, slot: str, args: tuple) -> Any:
        try:
            message = pickle.dumps((slot, args), pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - the adapter's inputs, not the program
            raise PolicyError(f"its inputs cannot be sent to its decision process ({type(e).__name__}: {e})") from None
        kind, value = self._ask(message)
        if kind == "ok":
            return value
        if kind == "timeout":
            raise sandbox.DeadlinePassed()
        raise PolicyError(value)


class Worker(_Child):
    """A child that runs trusted functions which call untrusted programs: work that would
    call a program too often for a round trip per call (a twin's replays of a live window),
    kept out of the serving process all the same. ``run("module:function", *args)`` imports
    the function there and returns what it returns; the kernel ends the child when one job
    computes for ``cpu_s``, and its memory is capped once its first job is done (the imports
    in). A failed or ended job raises ``PolicyError``; one with no answer in ``wait_s``,
    ``GaveUp``. The child stays for the next job until it is lost."""

    def __init__(self, wait_s: float = 2.0, cpu_s: float = 2.0, memory_mb: int = 1024):
        super().__init__(wait_s)
        self.cpu_s = cpu_s
        self._to.send(("worker", memory_mb))

    def run(self, target: str, *args: Any) -> Any:
        kind, value = self._ask(pickle.dumps((target, args, self.cpu_s), pickle.HIGHEST_PROTOCOL))
        if kind == "ok":
            return value
        raise PolicyError(value)


def _command() -> list[str]:
    """How a child starts: ``-m`` where autopoiesis is installed; where this module was loaded
    by path under a package name of its own (vLLM's plugin, in an environment without
    autopoiesis: ``autopoiesis_scheduler._sandbox``), the child loads it the same way."""
    package = __spec__.parent if __spec__ else "autopoiesis"
    if package == "autopoiesis":
        return [sys.executable, "-m", "autopoiesis.decision_process"]
    boot = ("import importlib, sys, types; package = types.ModuleType({0!r}); package.__path__ = [{1!r}]; "
            "sys.modules[{0!r}] = package; importlib.import_module({0!r} + '.decision_process').main()")
    return [sys.executable, "-c", boot.format(package, os.path.dirname(os.path.abspath(__file__)))]


def _start_child() -> tuple[subprocess.Popen, Connection, Connection]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen([*_command(), str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env)
    to, back = Connection(os.dup(process.stdin.fileno()), readable=False), Connection(os.dup(process.stdout.fileno()),
                                                                                       writable=False)
    process.stdin.close()
    process.stdout.close()
    return process, to, back


def _take_child() -> tuple[subprocess.Popen, Connection, Connection]:
    """A started child, the oldest spare (the most likely up) when there is one: Python takes
    about 0.25 s to start and import the sandbox, which a deployment then need not wait for
    (it waits for the program's compile). The next spares are started on the helper thread."""
    child = None
    with _spare_lock:
        while _spare and child is None:
            child = _spare.pop(0)
            if child[0].poll() is not None:  # it died meanwhile
                _end(*child)
                child = None
    child = child or _start_child()  # none ready: this caller waits for one to start
    _in_background(start_spares)
    return child


def start_spares(wait: bool = False) -> None:
    """Start children ahead, up to ``SPARES`` with those being started; ``wait``: until each is
    up (a live system's ``start`` calls this before its clock starts, so the first deployment
    takes them ready). No lock is held while one starts: a deployment takes a ready spare meanwhile."""
    while True:
        with _spare_lock:
            if len(_spare) + _starting[0] >= SPARES:
                spares = list(_spare)
                break
            _starting[0] += 1
        child = None
        try:
            child = _start_child()
        finally:
            with _spare_lock:
                _starting[0] -= 1
                if child is not None:
                    _spare.append(child)
    if wait:
        for _, _, back in spares:
            back.poll(START_S)  # "up" waits in the pipe: the child is ready for its program


def _in_background(job: Callable[[], Any]) -> None:
    """Run ``job`` on this process's helper thread (started on first use, and again in a
    forked copy of this process, which has none)."""
    with _helper_lock:
        jobs, owner = _helper
        if owner != os.getpid():
            jobs = queue.SimpleQueue()
            threading.Thread(target=_help, args=(jobs,), name="autopoiesis-decision-processes", daemon=True).start()
            _helper[:] = [jobs, os.getpid()]
    jobs.put(job)


def _help(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        try:
            job()
        except Exception:  # noqa: BLE001 - a spare that did not start is started by the next deployment
            pass


def _forget_parent_children() -> None:
    """In a forked copy of this process: the spares, and the locks' holders, are the parent's."""
    global _spare_lock, _helper_lock
    _spare_lock, _helper_lock = threading.Lock(), threading.RLock()
    _spare.clear()
    _starting[0] = 0


os.register_at_fork(after_in_child=_forget_parent_children)


@atexit.register
def _end_spare() -> None:
    with _spare_lock:
        while _spare:
            _end(*_spare.pop())


def _end(process: subprocess.Popen, *connections: Connection) -> None:
    """Close the pipes and kill the child at once; it is reaped on the helper thread."""
    for connection in connections:
        connection.close()
    if process.poll() is None:
        process.kill()
    try:
        _in_background(process.wait)
    except RuntimeError:  # no new thread at the interpreter's shutdown: its exit reparents the child
        pass


# -- the child ----------------------------------------------------------------------------
def serve(inbox: Connection, outbox: Connection, parent: int) -> None:
    """Take the first message (a program to serve, or work to do), then answer until the pipe
    closes (or ``parent``, the process that started this one, is gone)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the parent ends it, as an evaluation worker
        signal.signal(sig, signal.SIG_IGN)
    outbox.send(("up", None))
    try:
        if not _wait(inbox, parent):
            return
        kind, *setup = inbox.recv()
    except EOFError:  # a spare never used
        return
    sandbox.apply_limits(None)  # no files written, no core dumps; the memory cap waits (below)
    if kind == "worker":
        _work(inbox, outbox, parent, *setup)
    else:
        _answer(inbox, outbox, parent, *setup)


def _work(inbox: Connection, outbox: Connection, parent: int, memory_mb: int) -> None:
    """Run each job sent, ("module:function", args, cpu_s), and send back what it returns."""
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    capped = False
    while _wait(inbox, parent):
        try:
            target, args, cpu_s = inbox.recv()
        except EOFError:
            return
        except Exception as e:  # noqa: BLE001 - a class this process cannot import, say
            outbox.send(("error", f"its inputs could not be received ({type(e).__name__}: {e})"[:300]))
            continue
        signal.setitimer(signal.ITIMER_PROF, cpu_s)
        try:
            module, _, name = target.partition(":")
            answer = ("ok", getattr(importlib.import_module(module), name)(*args))
        except BaseException as e:  # noqa: BLE001 - the job's programs are untrusted: any failure is an answer
            answer = ("error", f"{type(e).__name__}: {e}"[:300])
        signal.setitimer(signal.ITIMER_PROF, 0)
        if not capped:  # after the first job: the modules it needs are loaded
            sandbox.apply_limits(memory_mb)
            capped = True
        try:
            outbox.send(answer)
        except Exception as e:  # noqa: BLE001 - a result that does not pickle
            outbox.send(("error", f"returned what cannot be sent back ({type(e).__name__}: {e})"[:300]))


def _answer(inbox: Connection, outbox: Connection, parent: int, source: str, slots: list, program_id: str,
            timeout_s: float, kill_cpu_s: float, memory_mb: int, check_every: int, state_limit: int) -> None:
    """Compile the program, then answer its slot calls."""
    try:
        policy = sandbox.compile_policy(source, slots, program_id)
    except Exception as e:  # noqa: BLE001 - untrusted code: its failure is the answer
        outbox.send(("rejected", str(e) if isinstance(e, sandbox.Rejected) else f"{type(e).__name__}: {e}"[:200]))
        return
    outbox.send(("ready", sorted(policy.functions)))
    deadline = sandbox.CpuDeadline(timeout_s)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    capped, until_state_check = False, check_every
    while _wait(inbox, parent):
        try:
            slot, args = inbox.recv()
        except EOFError:
            return
        except Exception as e:  # noqa: BLE001 - a class this process cannot import, say
            outbox.send(("error", f"its inputs could not be received ({type(e).__name__}: {e})"[:200]))
            continue
        if not capped:  # after the first inputs: the modules their classes need are loaded
            sandbox.apply_limits(memory_mb)
            capped = True
        signal.setitimer(signal.ITIMER_PROF, kill_cpu_s)
        try:
            with deadline:
                answer = ("ok", policy.functions[slot](*args))
        except sandbox.DeadlinePassed:
            answer = ("timeout", "")
        except BaseException as e:  # noqa: BLE001 - untrusted code: any failure is an answer
            answer = ("error", f"{type(e).__name__}: {e}"[:200])
        signal.setitimer(signal.ITIMER_PROF, 0)
        until_state_check -= 1
        if until_state_check <= 0:
            until_state_check = check_every
            if sandbox.state_items(policy, state_limit + 1) > state_limit:
                outbox.send(("lost", f"retired: its state passed {state_limit} items"))
                return
        try:
            outbox.send(answer)
        except Exception as e:  # noqa: BLE001 - an answer that does not pickle
            outbox.send(("error", f"returned what cannot be sent back ({type(e).__name__}: {e})"[:200]))


def _wait(inbox: Connection, parent: int) -> bool:
    """Wait for a message (or the pipe's end); False once the process that started this one is
    gone: evaluation workers forked from it may hold copies of the pipe, so its death alone
    need not close it."""
    while not inbox.poll(IDLE_LOOK_S):
        if os.getppid() != parent:
            return False
    return True


def main() -> None:
    inbox, outbox = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # nothing else may write into the answers
    serve(inbox, outbox, int(sys.argv[1]))  # not getppid(): the parent may be gone before this runs


if __name__ == "__main__":
    main()
