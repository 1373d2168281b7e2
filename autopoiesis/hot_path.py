"""The serving plane's side of a deployment: every policy call answered, whatever the program does.

``HotPath`` wraps a deployed program for the live system's loop: a call that raises, times
out or returns what the adapter refuses is answered by the incumbent's decision, then the
human-designed baseline's, and counted; the ``Guard`` (``guard.py``) reads the counts.
``hot_path`` builds one from programs, in the serving process or, with ``isolate``, each
untrusted program in a decision process of its own (``decision_process.py``). Adapters
import this module alone: it needs nothing of the evolution plane.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any, Callable, Mapping, Sequence

from . import sandbox
from .decision_process import GaveUp, IsolatedPolicy
from .program import PolicyError, Program


class HotPath:
    """The deployed policy as the serving plane calls it: every failure falls back, per call.

    A slot call runs the deployed function; an exception, a timeout (``timeout_s`` of the
    thread's CPU time, ``sandbox.CpuDeadline``, where the serving loop runs in the main
    thread) or a result the adapter's check refuses is answered by the next policy in
    ``fallbacks`` (the incumbent, then the built-in baseline) and counted, so the serving
    plane never loses a decision. A call that only stalled (a frozen machine, another thread
    holding the GIL) goes on and answers, up to 1 s, and is counted in ``stalls``, as is a
    decision process's call with no answer in its ``wait_s`` (that one falls back). The last
    fallback is trusted (human-designed) and runs without a deadline: a machine that stalls
    for longer than the deadline must not leave a request without a decision. Every
    ``state_check_every`` calls the untrusted programs' state is measured; one holding more
    than ``sandbox.STATE_LIMIT`` items answers no more calls (they fall back, counted), so a
    program that remembers every request cannot grow the serving process without bound.
    """

    state_check_every = 4096

    def __init__(self, policy: sandbox.Policy, fallbacks: Sequence[sandbox.Policy] = (),
                 checks: Mapping[str, Callable[[Any, tuple], bool]] | None = None, timeout_s: float | None = 0.05):
        self.program_id, self.source = policy.program_id, policy.source
        self.calls: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.errors: deque[str] = deque(maxlen=20)
        self.stalls = 0
        self.timeout_s = timeout_s
        self._main = threading.main_thread().ident
        self._deadline = sandbox.CpuDeadline(timeout_s) if timeout_s is not None else None
        self._timed = self._deadline is not None and self._deadline.armed
        chain = self._policies = [policy, *fallbacks]
        checks = checks or {}
        self.functions: dict[str, Callable] = {}
        self._chains: dict[str, list[Callable]] = {}  # per slot, the functions a call tries in order
        self._untrusted = chain[:-1] if len(chain) > 1 else chain  # the last fallback is human-designed
        self._until_state_check = self.state_check_every
        for slot in dict.fromkeys(s for p in chain for s in p.functions):
            fns = self._chains[slot] = [p.functions[slot] for p in chain if slot in p]
            self.functions[slot] = self._guarded(slot, fns, checks.get(slot))
            setattr(self, slot, self.functions[slot])

    def __contains__(self, slot: str) -> bool:
        return slot in self.functions

    def _run(self, fn: Callable, args: tuple, check: Callable | None, deadline: bool = True) -> bool | tuple[Any]:
        """(result,) when ``fn`` answered and ``check`` accepts it, else False; both under the deadline."""
        if not (deadline and self._timed) or threading.get_ident() != self._main:
            result = fn(*args)
            return (result,) if check is None or check(result, args) else False
        with self._deadline as deadline:  # the check runs under it too: it walks what untrusted code returned
            result = fn(*args)
            answer = (result,) if check is None or check(result, args) else False
        self.stalls += deadline.stalled
        return answer

    def _guarded(self, slot: str, fns: list[Callable], check: Callable | None) -> Callable:
        calls, fallbacks, errors, run = self.calls, self.fallbacks, self.errors, self._run
        trusted = len(fns) - 1 if len(fns) > 1 else -1  # a lone policy keeps its deadline
        # the trusted fallback runs without a deadline, and so does a call to a decision
        # process: the deadline is the child's own, and the wait has its bound
        timed = [i != trusted and not getattr(fn, "isolated", False) for i, fn in enumerate(fns)]

        def call(*args):
            calls[slot] += 1
            self._until_state_check -= 1
            if self._until_state_check <= 0:
                self._check_state()
            reason = ""
            for i, fn in enumerate(fns):
                try:
                    answer = run(fn, args, check, timed[i])
                    if answer:
                        return answer[0]
                    reason = reason or "returned an answer the adapter cannot use"
                except GaveUp:  # a decision process gave no answer in time: the machine, likely
                    self.stalls += 1
                    reason = reason or "no answer in time (stalled)"
                except sandbox.DeadlinePassed:
                    reason = reason or "timed out"
                except Exception as e:  # noqa: BLE001 - untrusted code: any failure falls back
                    reason = reason or f"{type(e).__name__}: {e}"[:200]
                if i == 0:
                    fallbacks[slot] += 1
                    errors.append(f"{slot}: {reason}")
            raise PolicyError(f"{slot}: the deployed policy and every fallback failed ({reason})")

        call.__name__ = slot
        return call

    def _check_state(self) -> None:
        """Retire each untrusted program whose state passed ``sandbox.STATE_LIMIT`` items."""
        self._until_state_check = self.state_check_every
        for policy in self._untrusted:
            items = sandbox.state_items(policy, sandbox.STATE_LIMIT + 1)
            if items <= sandbox.STATE_LIMIT:
                continue
            self._untrusted = [p for p in self._untrusted if p is not policy]

            def retired(*args):
                raise PolicyError(f"retired: its state passed {sandbox.STATE_LIMIT} items")

            for slot, fn in policy.functions.items():
                chain = self._chains[slot]
                chain[:] = [retired if f is fn else f for f in chain]

    def close(self) -> None:
        """End the decision processes of the programs this path isolated (when it is replaced)."""
        for policy in self._policies:
            if hasattr(policy, "close"):
                policy.close()

    def take_counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(calls by slot, fallbacks by slot, stalls) since the last take."""
        calls, fallbacks, stalls = dict(self.calls), dict(self.fallbacks), self.stalls
        self.calls.clear()
        self.fallbacks.clear()
        self.stalls = 0
        return calls, fallbacks, stalls

    def carry_counts(self, previous: "HotPath | None") -> None:
        """Take over the counts ``previous`` (the path this one replaces) has not reported yet."""
        if previous is not None:
            self.calls.update(previous.calls)
            self.fallbacks.update(previous.fallbacks)
            self.stalls += previous.stalls


def hot_path(program: Program, fallbacks: Sequence[Program], slots, checks=None, timeout_s: float | None = 0.05,
             isolate: bool = False) -> HotPath:
    """Compile ``program`` and its fallbacks (trusted last) into a ``HotPath``.

    ``isolate``: run the untrusted programs (all but the last fallback) each in a decision
    process of its own (``decision_process.IsolatedPolicy``), so that no call of theirs,
    not even one long C call, can hold or grow the serving process.
    """
    chain = [program, *fallbacks]
    untrusted = len(chain) - 1 if len(chain) > 1 else 1
    compiled = []
    try:
        for i, p in enumerate(chain):
            if isolate and i < untrusted:
                compiled.append(IsolatedPolicy(p.source, slots, p.id, timeout_s=timeout_s or 0.05))
            else:
                compiled.append(sandbox.compile_policy(p.source, slots, p.id))
    except BaseException:
        for policy in compiled:
            if hasattr(policy, "close"):
                policy.close()
        raise
    return HotPath(compiled[0], compiled[1:], checks, timeout_s)
