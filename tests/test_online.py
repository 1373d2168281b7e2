"""Online evolution on the simulator's live system: hot path, guard, rollback, honest time."""

import json
import math
from types import SimpleNamespace

import pytest

from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.archive import Archive
from autopoiesis.evolution import Config
from autopoiesis.metrics import Snapshot
from autopoiesis.online import Controller, OnlineConfig
from autopoiesis.program import Program, replace_function
from conftest import benchmark

SCENARIO = "stationary"
REQUESTS = 2500  # about 130 s of the scenario


def variant(base: Program, slot: str, new_def: str) -> Program:
    return Program(replace_function(base.source, slot, new_def))


@pytest.fixture
def adapter():
    return SimulatorAdapter(SCENARIO, requests=REQUESTS)


@pytest.fixture
def default(adapter):
    return adapter.baselines()["default"]


def serve(adapter, program, fallbacks):
    """Serve the whole workload. Tests pass the baseline behind itself as the controller
    deploys it: the trusted last of a chain answers without a deadline (a VM stall is no error)."""
    adapter.start(seed=1000)
    adapter.deploy(program, fallbacks)
    observation = adapter.observe(float("inf"))
    assert observation.finished
    return observation


def test_the_live_system_serves_every_request_once(adapter, default):
    observation = serve(adapter, default, [default])
    ids = [r.request_id for r in observation.records]
    assert len(ids) == REQUESTS and len(set(ids)) == REQUESTS
    assert observation.arrivals == REQUESTS
    assert sum(observation.fallbacks.values()) == 0 and observation.calls["dispatch"] >= REQUESTS


def test_a_policy_that_raises_on_the_hot_path_never_drops_a_request(adapter, default):
    raising = variant(default, "dispatch", (
        "def dispatch(request, replicas, now):\n"
        "    if request.id % 3 == 0:\n"
        "        raise ValueError('boom')\n"
        "    if request.id % 3 == 1:\n"
        "        return len(replicas) + 5\n"
        "    return 0\n"))
    raising = variant(raising, "priority", (
        "def priority(request, now):\n"
        "    return 1 / (request.id % 2)\n"))
    observation = serve(adapter, raising, [default])
    ids = {r.request_id for r in observation.records}
    assert len(observation.records) == REQUESTS and len(ids) == REQUESTS
    # two thirds of dispatch calls fail (raise or bad index), half of priority calls divide by zero
    assert observation.fallbacks["dispatch"] >= 0.6 * observation.calls["dispatch"]
    assert observation.fallbacks["priority"] >= 0.45 * observation.calls["priority"]


def test_a_policy_that_changes_its_inputs_on_the_hot_path_cannot_change_the_live_system(adapter, default):
    """dispatch gets the live replicas as a tuple: emptying it (here once, on one request, as
    a program that passed its twin replays could) fails that call, which falls back, and
    every later call still sees every replica."""
    clearing = variant(default, "dispatch", (
        "def dispatch(request, replicas, now):\n"
        "    if request.id == 7:\n"
        "        replicas.clear()\n"
        "    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)\n"))
    observation = serve(adapter, clearing, [default])
    assert len({r.request_id for r in observation.records}) == REQUESTS
    assert observation.fallbacks["dispatch"] == 1


def test_a_deployed_program_whose_state_grows_without_bound_is_retired(adapter, default, monkeypatch):
    """A program that remembers every request passes a short replay, then would grow the
    serving process for as long as it stays live: past the state limit its calls fall back."""
    from autopoiesis import sandbox
    from autopoiesis.hot_path import HotPath

    monkeypatch.setattr(sandbox, "STATE_LIMIT", 1000)
    monkeypatch.setattr(HotPath, "state_check_every", 100)
    remembering = Program("SEEN = {}\n" + replace_function(default.source, "priority", (
        "def priority(request, now):\n"
        "    SEEN[request.id] = now\n"
        "    return request.arrival\n")))
    observation = serve(adapter, remembering, [default])
    assert len({r.request_id for r in observation.records}) == REQUESTS
    calls, fallbacks = observation.calls["priority"], observation.fallbacks["priority"]
    # SEEN passes 1000 items (keys and values) at its 501st request; a check every 100 calls
    # (of any slot) retires it before the program answers 100 more
    assert 500 < calls - fallbacks <= 600, (calls, fallbacks)


def test_a_policy_that_hangs_on_the_hot_path_times_out_and_falls_back(adapter, default):
    hanging = variant(default, "priority", (
        "def priority(request, now):\n"
        "    while request.id % 500 == 7:\n"
        "        pass\n"
        "    return request.arrival\n"))
    observation = serve(adapter, hanging, [default])
    assert len({r.request_id for r in observation.records}) == REQUESTS
    assert observation.fallbacks["priority"] == sum(1 for i in range(REQUESTS) if i % 500 == 7)


@pytest.mark.parametrize("body", [
    "sum(itertools.count())",
    "sum(itertools.cycle([1]))",
    "sum(itertools.repeat(1))",
    "sum(iter(int, 1))",
    "sum(range(10 ** 12))",
    "max(itertools.product(range(99), repeat=9))",
    "max(map(sum, [range(10 ** 6)] * 10 ** 5))",
    "sorted([range(10 ** 6)] * 10 ** 5, key=sum)[0][0]",
    "min([range(10 ** 6)] * 10 ** 5, key=sum)[0]",
    "functools.reduce(max, map(sum, [range(10 ** 6)] * 10 ** 5))",
    "sum(itertools.starmap(sum, [(range(10 ** 6),)] * 10 ** 5))",
    "len(list(filter(sum, [range(10 ** 6)] * 10 ** 5)))",
    "[xs := [1], xs.extend(map(abs, xs))][0][0]",
    "[xs := [range(10 ** 6)] * 10 ** 5, xs.sort(key=sum)][0][0]",
])
def test_a_policy_that_loops_inside_one_c_call_falls_back(adapter, default, body):
    """A deadline acts between bytecodes; each of these drains an endless (or astronomically
    long) iterator inside one C call, or calls a C function per item from C (the fan-outs:
    half an hour of ``sum`` over a long range, or a list extended by a lazy map over itself),
    which held the serving thread for good. Now each is a generator, refused, or calls its
    function through bytecode, so the call times out or fails, and falls back."""
    looping = Program("import functools\nimport itertools\n" + replace_function(default.source, "priority", (
        "def priority(request, now):\n"
        "    if request.id == 7:\n"
        f"        return float({body})\n"
        "    return request.arrival\n")))
    observation = serve(adapter, looping, [default])
    assert len({r.request_id for r in observation.records}) == REQUESTS
    assert observation.fallbacks["priority"] == 1


def test_the_trusted_last_fallback_answers_without_a_deadline(adapter, default):
    """A machine can stall past the 50 ms deadline (these VMs freeze for seconds under load):
    the built-in baseline that ends the chain still answers, so no request goes without a
    decision. A lone policy keeps its deadline: nothing would answer for it if it hung."""
    from autopoiesis.hot_path import hot_path
    from autopoiesis.program import PolicyError

    hanging = variant(default, "priority", "def priority(request, now):\n    while True:\n        pass\n")
    slow = variant(default, "priority", "def priority(request, now):\n    for _ in range(10_000):\n"
                                        "        for _ in range(1_000):\n            pass\n"
                                        "    return request.arrival\n")  # well over 50 ms
    request = type("Request", (), {"id": 1, "arrival": 2.5, "prompt_tokens": 10, "generated": 0})()
    path = hot_path(hanging, [slow], adapter.slots(), timeout_s=0.05)
    assert path.priority(request, 3.0) == 2.5 and path.fallbacks["priority"] == 1
    with pytest.raises(PolicyError, match="timed out"):
        hot_path(hanging, [], adapter.slots(), timeout_s=0.05).priority(request, 3.0)


def test_a_deadline_alarm_swallowed_by_a_gc_callback_recurs(monkeypatch):
    """Python ignores an exception raised in a finalizer ("Exception ignored in ..."), so an
    alarm that lands in one is lost (CI logged it once, from a WeakSet callback). The deadline
    repeats until disarmed, so a call that goes on spinning is still stopped.

    The swallowed alarm goes to ``sys.unraisablehook``; the test's own hook records it.
    pytest's hook imports tracemalloc on first use, and once on CI the next look of the
    deadline landed in that import, which pytest reported as a failure of its hook."""
    import gc
    import sys
    import time

    from autopoiesis.hot_path import HotPath
    from autopoiesis.sandbox import DeadlinePassed, Policy

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)

    class SlowFinalizer:
        def __del__(self):
            end = time.thread_time() + 0.2  # past the 50 ms deadline: the alarm lands in here
            while time.thread_time() < end:
                pass

    def spinning(request, now):
        SlowFinalizer()  # finalized at once, swallowing the first alarm
        end = time.monotonic() + 3.0  # bounded, so a lost deadline fails the test instead of hanging it
        while time.monotonic() < end:
            pass
        return -1.0

    path = HotPath(Policy("spin", {"priority": spinning}), [Policy("fcfs", {"priority": lambda request, now: 7.0})])
    gc.collect()
    started = time.monotonic()
    assert path.priority(None, 0.0) == 7.0 and path.fallbacks["priority"] == 1
    assert time.monotonic() - started < 2.0  # 50 ms of CPU, or the 1 s cap on a busy machine; not the 3 s spin
    assert [type(u.exc_value) for u in ignored] == [DeadlinePassed]  # the first alarm was swallowed


def test_the_hot_path_leaves_the_host_process_its_alarm():
    """SIGALRM is the host's too: pytest-timeout stops a hung test with it, an application
    with ``signal.alarm``. Building a hot path replaced the host's handler for good and each
    call cancelled its timer, so a stuck test ran on past its timeout (CI: 321 s of a 300 s
    limit). Now the host's handler is back after every call, and its timer goes on, less the
    time the calls took, even when one of them computes past its deadline."""
    import signal
    import time

    from autopoiesis.hot_path import HotPath
    from autopoiesis.sandbox import Policy

    def spinning(request, now):
        while True:
            pass

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    try:
        path = HotPath(Policy("spin", {"priority": spinning}), [Policy("fcfs", {"priority": lambda r, n: 7.0})])
        quick = HotPath(Policy("quick", {"priority": lambda r, n: 1.0}))
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        assert path.priority(None, 0.0) == 7.0 and path.fallbacks["priority"] == 1  # its deadline still works
        assert sum(quick.priority(None, 0.0) for _ in range(1000)) == 1000.0
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < left <= 1.0 - (time.monotonic() - started) + 0.01  # still set, and counting down
        while not fired and time.monotonic() < started + 10:
            time.sleep(0.01)
        assert len(fired) == 1 and 0.99 <= fired[0] - started < 3.0  # once, on time, to the host's handler
        signal.setitimer(signal.ITIMER_REAL, 0.01)  # and an alarm due during a policy call fires after it
        fired.clear()
        path.priority(None, 0.0)
        time.sleep(0.05)
        assert len(fired) == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_alarm_the_host_left_to_its_default_action_still_ends_the_process():
    """``signal.alarm(n)`` with no handler is how a script caps its own run time."""
    import signal
    import subprocess
    import sys

    script = ("import signal, time\n"
              "from autopoiesis.hot_path import HotPath\n"
              "from autopoiesis.sandbox import Policy\n"
              "path = HotPath(Policy('quick', {'priority': lambda r, n: 1.0}))\n"
              "signal.alarm(1)\n"
              "for _ in range(1000):\n"
              "    path.priority(None, 0.0)\n"
              "time.sleep(10)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGALRM, (out.returncode, out.stderr[-500:])


def test_a_deadline_that_passes_as_the_call_ends_leaves_no_alarm_behind():
    """An alarm due just as a call ended was taken in ``CpuDeadline.__exit__`` before it disarmed
    the timer: DeadlinePassed skipped the disarming, and the repeating timer went on raising in
    the serving loop, between calls, until an alarm passed to the host's handler ended the
    process (``Alarm clock``) or, under pytest, failed a pool worker of another test. Looking
    every 0.1 ms (the hot path looks every 10 ms) makes that common: before the fix, 19 to 47
    calls of 2000 sized around their deadline leaked, or the process died."""
    import subprocess
    import sys

    script = """
import signal, time
from autopoiesis import sandbox
outside = []
signal.signal(signal.SIGALRM, lambda signum, frame: outside.append(frame))  # the host's handler
t = time.thread_time()
x = 0
for i in range(200_000):
    x += i
per_addition = (time.thread_time() - t) / 200_000
deadline = sandbox.CpuDeadline(cpu_s=0.002, recheck_s=0.0001)
leaks = passed = 0
for trial in range(2000):
    try:
        try:
            with deadline:  # from half to one and a half times the deadline's CPU time
                x = 0
                for i in range(int(0.002 / per_addition * (0.5 + (trial % 50) / 50))):
                    x += i
        except sandbox.DeadlinePassed:
            passed += 1
        if signal.setitimer(signal.ITIMER_REAL, 0) != (0.0, 0.0) or sandbox._timing[0] is not None:
            leaks += 1
            sandbox._timing[0] = None
    except sandbox.DeadlinePassed:  # raised between calls
        leaks += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        sandbox._timing[0] = None
print(leaks, len(outside), passed)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    leaks, outside, passed = map(int, out.stdout.split())
    assert leaks == 0 and outside == 0
    assert 0 < passed < 2000  # both sides of the deadline were exercised


def test_a_pause_between_arming_and_the_call_neither_escapes_nor_takes_the_host_timer(monkeypatch):
    """A garbage collection right after ``__enter__`` armed the timer ran past the deadline, and the
    alarm raised in ``__enter__``: the body never ran and ``__exit__`` never disarmed. The next call
    took the leftover timer for the host's and put it back after it ended, so an alarm went to
    pytest-timeout's handler seconds into a test ("Timeout (>300.0s)" after 7 s, in the switching
    oracle's test). Here the pause is a test double: a ``signal`` module whose ``setitimer`` computes
    for 50 ms after arming."""
    import signal
    import time

    from autopoiesis import sandbox

    setitimer, pausing = signal.setitimer, [True]

    class PausingSignal:  # stands in for a long garbage collection right after arming
        def __getattr__(self, name):
            return getattr(signal, name)

        @staticmethod
        def setitimer(which, seconds, interval=0.0):
            previous = setitimer(which, seconds, interval)
            if pausing[0] and seconds > 0:
                pausing[0] = False
                end = time.thread_time() + 0.05
                while time.thread_time() < end:
                    pass
            return previous

    fired = []
    previous_handler = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(1))
    monkeypatch.setattr(sandbox, "signal", PausingSignal())
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)  # the host's timer
        deadline = sandbox.CpuDeadline(cpu_s=0.01, recheck_s=0.005)
        with deadline:
            answer = 42
        assert answer == 42 and sandbox._timing[0] is None
        assert 4.5 < signal.getitimer(signal.ITIMER_REAL)[0] <= 5.0 and not fired  # the host's, not ours
        with pytest.raises(sandbox.DeadlinePassed):  # and the deadline still stops a call that spins
            with deadline:
                while True:
                    pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


def test_ctrl_c_or_sigterm_as_the_timer_is_armed_leaves_no_alarm_behind(monkeypatch):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM through the CLI) raised in ``__enter__`` just after
    it armed the timer: no ``with`` calls ``__exit__`` then, and the armed timer killed the
    process with SIGALRM as it exited after its clean-up (exit -14 in place of 143, once in some
    runs of test_cli's SIGTERM test), or raised DeadlinePassed into the clean-up. Here the
    interrupt is a test double: a ``signal`` module whose ``setitimer`` raises it after arming."""
    import gc
    import signal

    from autopoiesis import sandbox

    setitimer = signal.setitimer

    class InterruptedSignal:
        def __getattr__(self, name):
            return getattr(signal, name)

        @staticmethod
        def setitimer(which, seconds, interval=0.0):
            previous = setitimer(which, seconds, interval)
            if seconds > 0:
                raise KeyboardInterrupt  # what the SIGINT or SIGTERM handler raises at this point
            return previous

    monkeypatch.setattr(sandbox, "signal", InterruptedSignal())
    try:
        with pytest.raises(KeyboardInterrupt):
            with sandbox.CpuDeadline(cpu_s=0.01):
                pass
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert sandbox._timing[0] is None and gc.isenabled()
    finally:
        setitimer(signal.ITIMER_REAL, 0)
        sandbox._timing[0] = None
        gc.enable()


@pytest.mark.parametrize("host_timer", [0.0, 1.0])
def test_a_call_left_without_its_exit_stops_the_alarm_at_the_next_one(host_timer):
    """An interrupt can also come as ``__exit__`` begins, before it disarms (a function's first
    instruction runs pending signal handlers): the ``with`` is left, the timer runs on, and its
    alarms raised DeadlinePassed into whatever ran next once that had computed for the deadline's
    CPU time (a run's clean-up), with the collector left off. The next alarm now sees that the
    frame that entered the call is gone and disarms. Here the call is entered by hand and its
    frame returns without ``__exit__``. A host's pending timer (``host_timer`` seconds) is put
    back as ``__exit__`` would have, less the time since the call began: it was left cancelled."""
    import gc
    import signal
    import time

    from autopoiesis import sandbox

    def left_without_exit():
        sandbox.CpuDeadline(cpu_s=0.01, recheck_s=0.005).__enter__()

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    try:
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, host_timer)
        left_without_exit()
        end = time.thread_time() + 0.1  # ten times the deadline's CPU time, outside the call
        while time.thread_time() < end:
            pass
        left = signal.getitimer(signal.ITIMER_REAL)
        assert sandbox._timing[0] is None and gc.isenabled()
        if not host_timer:
            assert left == (0.0, 0.0)
            return
        assert 0 < left[0] <= host_timer - (time.monotonic() - started) + 0.01 and not fired
        while not fired and time.monotonic() < started + 10:
            time.sleep(0.01)
        assert len(fired) == 1 and host_timer - 0.01 <= fired[0] - started < host_timer + 2.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sandbox._timing[0] = None
        gc.enable()


def test_a_stalled_call_on_the_hot_path_answers_and_counts_as_a_stall():
    """The deadline is 50 ms of the serving thread's CPU time. Here another thread holds the
    GIL for about 0.2 s while the policy runs (a frozen machine does the same): 50 ms pass in
    real time while the policy hardly computes. The call goes on and answers, and counts as
    a stall, not a fallback. With a real-time deadline it fell back (checked).

    The policy sleeps until the other thread has the GIL, so the stall falls inside the call
    even when a busy host is slow to schedule that thread (a policy that computed for 4 ms
    instead finished first 2 times in 25 with both cores busy). A try where the host billed
    the thread over 40 ms of CPU anyway (CI once measured 55 ms for 14 ms of work) is staged
    again, up to three times; only then is the path's behaviour asserted."""
    import threading
    import time

    from autopoiesis.hot_path import HotPath
    from autopoiesis.sandbox import Policy

    def staged_stall():
        go, hogging = threading.Event(), threading.Event()

        def hog():
            go.wait()
            hogging.set()
            sum(range(2 * 10**7))  # one C call: holds the GIL throughout

        def waits_for_the_hog(request, now):
            for _ in range(500):  # at most about 1 s
                if hogging.is_set():
                    break
                time.sleep(0.002)  # lets the other thread take the GIL; waking needs it back
            return 1.0

        path = HotPath(Policy("stalled", {"priority": waits_for_the_hog}), [Policy("fcfs", {"priority": lambda r, n: 7.0})])
        hogger = threading.Thread(target=hog)
        hogger.start()
        cpu, started = time.thread_time(), time.monotonic()
        go.set()
        answer = path.priority(None, 0.0)
        took, cpu = time.monotonic() - started, time.thread_time() - cpu
        hogger.join()
        return path, answer, took, cpu

    tries = []
    for _ in range(3):
        path, answer, took, cpu = staged_stall()
        tries.append((round(took, 3), round(cpu, 4)))
        if took > 0.1 and cpu < 0.04:  # a stall happened, not a slow policy
            break
    assert took > 0.1 and cpu < 0.04, tries
    assert answer == 1.0 and path.fallbacks["priority"] == 0 and path.stalls == 1
    successor = HotPath(Policy("fcfs", {"priority": lambda r, n: 7.0}))
    successor.carry_counts(path)  # a deployment keeps what the outgoing path has not reported
    assert successor.take_counts() == ({"priority": 1}, {}, 1) and successor.take_counts() == ({}, {}, 0)


def test_a_garbage_collection_of_the_hosts_heap_is_not_charged_to_the_policy_call():
    """A baseline on the live simulator fell back ("dispatch: timed out") once torch had been
    imported into the test process: the allocation that started a collection of the whole
    heap came inside a policy call, and the collection's CPU time counted against the 50 ms
    deadline. The collector now waits until the call is over. Here a policy allocates a few
    hundred lists a call, at a threshold of 10: it would start several collections in each."""
    import gc

    from autopoiesis import sandbox
    from autopoiesis.hot_path import HotPath
    from autopoiesis.sandbox import Policy

    def allocates(request, now):
        return float(len([[i] for i in range(300)]))

    def spins(request, now):
        while True:
            pass

    collections = []

    def note(phase, info):
        if phase == "start":
            collections.append(sandbox._timing[0] is not None)  # inside a call under the deadline

    path = HotPath(Policy("allocates", {"priority": allocates}), [Policy("fcfs", {"priority": lambda r, n: 7.0})])
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.callbacks.append(note)
    gc.set_threshold(10)
    gc.enable()
    try:
        answers = [path.priority(None, 0.0) for _ in range(20)]
        collecting = gc.isenabled()  # the calls turned the collector back on as they ended
        stopped = HotPath(Policy("spins", {"priority": spins}), [Policy("fcfs", {"priority": lambda r, n: 7.0})])
        timed_out = stopped.priority(None, 0.0), stopped.fallbacks["priority"]
        collecting_after_a_timeout = gc.isenabled()  # a call the deadline stopped turns it back on too
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*threshold)
        if not enabled:
            gc.disable()
    assert answers == [300.0] * 20 and path.fallbacks["priority"] == 0 and path.stalls == 0
    assert collections and not any(collections)  # collections ran, none inside a policy call
    assert collecting and collecting_after_a_timeout and timed_out == (7.0, 1)


def controller(adapter, tmp_path, **online):
    config = OnlineConfig(**{"window_s": 15.0, "period": 0, "drift_signals": (), "evolution_cost_s": 2.0, **online})
    return Controller(adapter, config, Config(population=4, generations=1, workers=1, held_out_snapshots=0),
                      archive=Archive(tmp_path / "archive.db"))


def test_a_confirmed_program_that_starts_failing_on_the_hot_path_is_rolled_back(adapter, default, tmp_path):
    """The guard confirms a program after its first clean windows; one that fails on most
    calls later (here from 100 s on: a new workload, or its state retired) goes back too,
    at the first window that shows it, not only while the guard watches."""
    later = variant(default, "priority", (
        "def priority(request, now):\n"
        "    if now > 100:\n"
        "        raise ValueError('a case it never met')\n"
        "    return request.arrival\n"))
    c = controller(adapter, tmp_path, guard_windows=1)
    c.force(later, at=30.0)
    c.run()
    kinds = [(d.kind, d.program) for d in c.deployments]
    assert ("deploy", later.id) in kinds and ("confirm", later.id) in kinds
    rollback = next(d for d in c.deployments if d.kind == "rollback")
    assert rollback.program == default.id and "after it was confirmed" in rollback.reason
    assert 105.0 <= rollback.time <= 120.0 + 1e-9  # the first window that ends after 100 s
    assert c.live.id == default.id and later.id in c.refused


def test_a_bad_program_forced_live_is_rolled_back_within_the_guard_windows(adapter, default, tmp_path):
    bad = variant(default, "dispatch", "def dispatch(request, replicas, now):\n    return 0\n")
    c = controller(adapter, tmp_path, guard_windows=2)
    c.force(bad, at=45.0)
    c.run()
    kinds = [(d.kind, d.program) for d in c.deployments]
    assert ("deploy", bad.id) in kinds and ("rollback", default.id) in kinds
    deployed = next(d.time for d in c.deployments if d.kind == "deploy")
    rolled = next(d.time for d in c.deployments if d.kind == "rollback")
    watched = [w for w in c.windows if deployed <= w.start and w.end <= rolled + 1e-9]
    assert len(watched) <= c.config.guard_windows
    assert all(w.policy == default.id for w in c.windows if w.start >= rolled)
    assert c.summary()["rollbacks"] == 1
    stored = c.archive.deployments(c.run_id)
    assert [d["kind"] for d in stored] == [d.kind for d in c.deployments]
    assert len(c.archive.windows(c.run_id)) == len(c.windows)


class BrokenGuardTwin(SimulatorAdapter):
    """Test double around the real simulator: its snapshot for the guard's counterfactual
    (the incumbent's, once swapped out) cannot be replayed, as the simulator's could not
    after GPUs had left before 602415b."""

    def window_snapshot(self, since, until, incumbent, horizon_s=0.0):
        snapshot = super().window_snapshot(since, until, incumbent, horizon_s)
        if incumbent.id == self.live.program_id:
            return snapshot
        return Snapshot(self.name, {**snapshot.params, "plan": [[[99], 1, 1]]}, label=snapshot.label)


def test_a_guard_replay_without_a_counterfactual_is_reported(default, tmp_path):
    """A suspect window whose incumbent replay fails counts as clean (the policy is not blamed
    for the twin), and the run says so, with the twin's error, instead of passing it silently."""
    bad = variant(default, "dispatch", "def dispatch(request, replicas, now):\n    return 0\n")
    events = []
    c = Controller(BrokenGuardTwin(SCENARIO, requests=REQUESTS),
                   OnlineConfig(window_s=15.0, period=0, drift_signals=(), evolution_cost_s=2.0, guard_windows=2),
                   Config(population=4, generations=1, workers=1, held_out_snapshots=0),
                   archive=Archive(tmp_path / "archive.db"), on_event=lambda kind, data: events.append((kind, data)))
    c.force(bad, at=45.0)
    c.run()
    warned = [data["message"] for kind, data in events if kind == "warning"]
    assert warned and all("the guard has no counterfactual for the window that ended at" in m for m in warned)
    assert "uses a GPU that is not online" in warned[0] and "it counts as clean" in warned[0]
    assert [d.kind for d in c.deployments] == ["initial", "deploy", "confirm"]  # with the real twin: rolled back


def test_a_reason_or_warning_that_quotes_a_programs_error_prints_as_it_is():
    """A rollback's reason, a rejection's and a warning can quote a generated program's error,
    which may read as rich markup ("[/x]" raised MarkupError): the live view and the report's
    deployments table print it as it is."""
    from rich.console import Console

    from autopoiesis.online import Deployment
    from autopoiesis.online_view import LiveView, deployments_table

    reason = "live mean_e2e_open 9 vs 3; it fails on the twin replay: ValueError: [/x] [bold]"
    console = Console(record=True, width=300, force_terminal=False)
    view = LiveView(console, "run")
    view.on_event("deployment", {"deployment": Deployment(1.0, "rollback", "abcdefgh", reason)})
    view.on_event("warning", {"message": reason})
    console.print(deployments_table(view.deployments))
    assert console.export_text().count("ValueError: [/x] [bold]") == 3


def test_a_program_that_always_fails_is_rolled_back_on_its_fallback_rate(adapter, default, tmp_path):
    broken = variant(default, "priority", "def priority(request, now):\n    return [][1]\n")
    c = controller(adapter, tmp_path, guard_windows=3)
    c.force(broken, at=30.0)
    c.run()
    rollback = next(d for d in c.deployments if d.kind == "rollback")
    assert "fell back" in rollback.reason
    assert len(c.records) == REQUESTS  # nothing was lost meanwhile


def test_a_good_program_is_confirmed_not_rolled_back(adapter, default, tmp_path):
    c = controller(adapter, tmp_path, guard_windows=2)
    same_but_renamed = variant(default, "priority", "def priority(request, now):\n    return request.arrival + 0.0\n")
    c.force(same_but_renamed, at=30.0)
    c.run()
    assert [d.kind for d in c.deployments] == ["initial", "deploy", "confirm"]


def test_windows_carry_the_length_mix_and_a_length_shift_triggers_drift_on_it():
    """length_shift's prompts grow at 300 s at a steady rate: only the length mix shows it."""
    c = Controller(SimulatorAdapter("length_shift"), OnlineConfig(window_s=30.0, period=0, margin=10.0,
                                                                  drift_signals=("mean_prompt",), evolution_cost_s=1.0),
                   Config(population=2, generations=0, workers=1, held_out_snapshots=0), archive=Archive())
    c.run()
    before = [w.metrics["mean_prompt"] for w in c.windows if w.end <= 300.0]
    after = [w.metrics["mean_prompt"] for w in c.windows if 330.0 <= w.start < 600.0]
    assert min(after) > 1.5 * max(before)
    drifted = [w.end for w in c.windows if "mean_prompt" in w.triggers]
    assert drifted and 300.0 < drifted[0] <= 390.0
    # after the last arrival (600 s) the backlog drains: no length mix, so no drift on what finishes
    # last (its prompts set off a false mean_prompt trigger at 630 s on burst's online run)
    drain = [w for w in c.windows if w.start >= 600.0]
    assert drain and all(w.arrivals == 0 and "mean_prompt" not in w.metrics for w in drain)


def test_a_drift_signal_no_window_carries_is_named_once_not_ignored_in_silence(adapter):
    events = []
    c = Controller(adapter, OnlineConfig(window_s=15.0, period=0, drift_signals=("rate", "mean_promt", "p99_ttft"),
                                         max_windows=3),
                   Config(population=2, generations=0, workers=1, held_out_snapshots=0), archive=Archive(),
                   on_event=lambda kind, data: events.append((kind, data)))
    c.run()
    warnings = [data["message"] for kind, data in events if kind == "warning"]
    assert len(warnings) == 1 and "mean_promt are not among" in warnings[0] and "p99_ttft" not in warnings[0]


def test_the_archive_recalls_only_evolved_winners_the_guard_confirmed(tmp_path):
    archive = Archive(tmp_path / "a.db")
    bred = {"conditions": {"rate": 20.0, "mean_prompt": 700.0}}
    for run, adapter in (("first", "simulator"), ("other", "engine"), ("second", "simulator")):
        archive.create_run(run, adapter, {"mode": "online"})
    log = [("first", "initial", "a", {}), ("first", "deploy", "kept", bred), ("first", "confirm", "kept", {}),
           ("first", "deploy", "undone", bred), ("first", "rollback", "a", {}),
           ("first", "deploy", "forced", {}), ("first", "confirm", "forced", {}),  # forced: bred for nothing
           ("other", "deploy", "engine's", bred), ("other", "confirm", "engine's", {}),
           ("second", "deploy", "watched", bred),  # the run ended with it under watch
           ("second", "deploy", "later", {"conditions": {"rate": 9.0}}), ("second", "confirm", "later", {})]
    for i, (run, kind, program, detail) in enumerate(log):
        archive.add_deployment(run, float(i), kind, program, "", detail)
    winners = archive.confirmed_winners("simulator")
    assert [(w["run"], w["program"]) for w in winners] == [("second", "later"), ("first", "kept")]
    assert winners[1]["conditions"] == bred["conditions"]
    assert [w["program"] for w in archive.confirmed_winners("simulator", exclude="second")] == ["kept"]


def test_a_later_online_run_seeds_its_evolutions_with_the_winners_earlier_runs_confirmed(adapter, tmp_path):
    """A program bred and confirmed in an earlier run, and no baseline, is among the seeds of
    a new run's evolutions; it goes live there only by beating the incumbent on this run's
    twin, and says where it came from. ``recall=False`` leaves it out."""
    archive = Archive(tmp_path / "a.db")
    aging = adapter.baselines()["priority:fcfs_aging"]
    # least outstanding, the faster replica on a near tie: it beats every baseline on this run's
    # first window (62.84 s against 63.10 s for least_outstanding, the best of them)
    earlier = variant(adapter.baselines()["default"], "dispatch", "def dispatch(request, replicas, now):\n"
                      "    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding - 0.1 * replicas[i].speed)\n")
    archive.create_run("earlier", "SimulatorAdapter", {"mode": "online"})
    archive.add_program(earlier)
    archive.add_deployment("earlier", 40.0, "deploy", earlier.id, "", {"conditions": {"rate": 20.0}})
    archive.add_deployment("earlier", 70.0, "confirm", earlier.id, "", {})
    archive.add_deployment("earlier", 80.0, "deploy", aging.id, "", {"conditions": {"rate": 20.0}})
    archive.add_deployment("earlier", 110.0, "confirm", aging.id, "", {})  # a baseline: a seed anyway

    def seeded(recall):
        c = Controller(adapter, OnlineConfig(window_s=15.0, period=2, drift_signals=(), evolution_cost_s=2.0,
                                             margin=0.0, recall=recall),
                       Config(population=4, generations=0, workers=1, held_out_snapshots=0), archive=archive)
        c.run()
        evolutions = [r["id"] for r in archive.runs() if r["id"].startswith(c.run_id + "-e")
                      and r["status"] == "done"]  # not one that serving's end stopped
        assert evolutions
        return c, [earlier.id in {b["program"] for b in archive.births(r)} for r in evolutions]

    c, seeds = seeded(True)
    assert all(seeds) and c.summary()["recalled"] == 1 and archive.run(c.run_id)["config"]["recalled"] == {
        earlier.id: "earlier"}
    deployed = [d for d in c.deployments if d.kind == "deploy" and d.program == earlier.id]
    assert deployed and "recalled: confirmed in earlier" in deployed[0].reason
    assert deployed[0].conditions["rate"] > 0 and deployed[0].conditions["mean_prompt"] > 0
    assert not any(seeded(False)[1])


def test_hostile_or_hanging_recalled_programs_are_scored_in_the_sandbox_and_never_go_live(adapter, default, tmp_path):
    """The archive is a file: what it recalls is untrusted code like any other."""
    hostile = Program("import os\n" + replace_function(default.source, "priority", "def priority(request, now):\n"
                      f"    os.system('touch {tmp_path}/pwned')\n    return 0.0\n"))
    hanging = variant(default, "priority", "def priority(request, now):\n    while True:\n        pass\n")
    archive = Archive(tmp_path / "a.db")
    archive.create_run("earlier", "SimulatorAdapter", {"mode": "online"})
    for i, program in enumerate((hostile, hanging)):
        archive.add_program(program)
        archive.add_deployment("earlier", 10.0 + 20 * i, "deploy", program.id, "", {"conditions": {"rate": 20.0}})
        archive.add_deployment("earlier", 20.0 + 20 * i, "confirm", program.id, "", {})
    c = Controller(adapter, OnlineConfig(window_s=15.0, period=2, drift_signals=(), evolution_cost_s=2.0, margin=0.0),
                   Config(population=4, generations=0, workers=1, held_out_snapshots=0, timeout=2.0), archive=archive)
    summary = c.run()
    assert summary["recalled"] == 2 and summary["requests"] == REQUESTS
    assert not {d.program for d in c.deployments} & {hostile.id, hanging.id}
    assert not (tmp_path / "pwned").exists()


class StallingSimulator(SimulatorAdapter):
    """Test double around the real simulator: every look at the live system reports one
    stalled hot-path call (a machine freeze cannot be had on demand; the HotPath test above
    makes a real one). ``real`` counts the stalls the machine made on its own: a starved CPU
    can push a call past the hot path's deadline."""

    looks = real = 0

    def observe(self, until):
        observation = super().observe(until)
        self.looks += 1
        self.real += observation.stalls
        observation.stalls += 1
        return observation


def test_stalled_calls_reach_the_windows_the_archive_and_the_report_and_roll_nothing_back(default, tmp_path):
    from rich.console import Console

    from autopoiesis.online_view import print_report

    adapter = StallingSimulator(SCENARIO, requests=REQUESTS)
    c = controller(adapter, tmp_path, guard_windows=2)
    c.force(variant(default, "priority", "def priority(request, now):\n    return request.arrival + 0.0\n"), at=30.0)
    c.run()
    assert [d.kind for d in c.deployments] == ["initial", "deploy", "confirm"]  # a stall is no fallback
    assert sum(w.stalls for w in c.windows) == c.summary()["stalls"] == adapter.looks + adapter.real
    assert adapter.looks > 0
    assert [w["stalls"] for w in c.archive.windows(c.run_id)] == [w.stalls for w in c.windows]
    console = Console(record=True, width=200)
    print_report(console, c.archive, c.run_id)
    text = console.export_text()
    assert f"{c.summary()['stalls']} stalled call(s)" in text and f"{c.windows[0].stalls} stalled" in text


def test_a_run_that_ends_while_the_guard_watches_ends_with_the_program_it_served_last(adapter, default, tmp_path):
    """Serving can end before the Guard confirms or rolls back the newcomer: the run ended with
    the program it served last, which the report, ``report --list`` and ``--policy RUN`` name.
    Before, the summary's ``final_policy`` named the incumbent it had replaced."""
    newcomer = variant(default, "priority", "def priority(request, now):\n    return request.arrival - 0.5 * now\n")
    c = controller(adapter, tmp_path, guard_windows=20)
    c.force(newcomer, at=60.0)
    summary = c.run()
    assert [d.kind for d in c.deployments][:2] == ["initial", "deploy"] and "confirm" not in [d.kind for d in c.deployments]
    assert c.incumbent.id == default.id != newcomer.id
    assert summary["final_policy"] == newcomer.id == c.windows[-1].policy == c.archive.windows(c.run_id)[-1]["policy"]


def test_evolution_deploys_at_the_time_it_finished_and_the_live_plane_kept_serving(adapter, tmp_path):
    c = controller(adapter, tmp_path, period=2, evolution_cost_s=7.0, margin=0.0)
    c.run()
    triggers = [w.end for w in c.windows if w.triggers]
    decided = [d for d in c.deployments if d.kind in ("deploy", "rejected") and d.reason != "forced by the caller"]
    assert triggers and decided
    for d in decided:  # each decision lands exactly the evolution's cost after a trigger
        assert any(abs(d.time - (t + 7.0)) < 1e-6 for t in triggers)
    assert len(c.records) == REQUESTS
    assert c.summary()["evolutions"] >= 2
    # each evolution is an archived run of its own, scored on that window's snapshot
    runs = [r["id"] for r in c.archive.runs()]
    assert any(r.startswith(c.run_id + "-e") for r in runs)


def test_an_evolution_still_running_when_serving_ends_is_reported_unfinished(adapter, tmp_path):
    from rich.console import Console

    from autopoiesis.online_view import print_report

    c = controller(adapter, tmp_path, period=2, evolution_cost_s=10_000.0)
    c.run()
    began = next(w.end for w in c.windows if w.triggers)
    assert [d.kind for d in c.deployments] == ["initial", "unfinished"]
    last = c.deployments[-1]
    assert last.time == c.windows[-1].end and last.program == c.incumbent.id
    assert last.reason == f"serving ended at {last.time:.0f} s, before the evolution that began at {began:.0f} s could deploy"
    console = Console(record=True, width=250)
    print_report(console, c.archive, c.run_id)
    text = console.export_text()
    assert "unfinished" in text and last.reason in text


def test_a_guard_replay_still_running_when_serving_ends_is_reported_unfinished(adapter, default, tmp_path):
    c = controller(adapter, tmp_path)
    c.force(variant(default, "dispatch", "def dispatch(request, replicas, now):\n    return 0\n"), at=135.0)
    c.run()  # the window after the swap is the last, and suspect: its replay cannot end before serving does
    assert [d.kind for d in c.deployments] == ["initial", "deploy", "unfinished"]
    last = c.deployments[-1]
    assert last.program == c.live.id != default.id
    assert last.reason == f"serving ended at {last.time:.0f} s, before the guard's replay of the window that ended at " \
                          f"{c.windows[-1].end:.0f} s"


def test_window_replay_is_deterministic_and_the_incumbent_does_not_replan(adapter, default):
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(60.0)
    snapshot = adapter.window_snapshot(30.0, 60.0, default)
    assert snapshot.params["requests"] and snapshot.params["plan"]
    from autopoiesis.sandbox import compile_policy

    policy = compile_policy(default.source, adapter.slots(), default.id)
    first, second = adapter.evaluate(policy, snapshot), adapter.evaluate(policy, snapshot)
    assert first == second and first["reconfigurations"] == 0
    uniform = adapter.baselines()["schedule:uniform"]
    other = adapter.evaluate(compile_policy(uniform.source, adapter.slots(), uniform.id), snapshot)
    assert other["reconfigurations"] == 1  # a different planner pays to change the plan


def test_the_cli_runs_online_and_reports_windows_deployments_and_a_plot(tmp_path):
    from test_cli import cli

    runs = tmp_path / "runs"
    proc = cli("evolve", "--adapter", "simulator", "--scenario", SCENARIO, "-o", f"requests={REQUESTS}", "--online",
               "--window", "15", "--period", "2", "--evolution-cost", "3", "--population", "4", "--generations", "1",
               "--workers", "1", "--runs-dir", str(runs), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["requests"] == REQUESTS and out["windows"] >= 8 and out["evolutions"] >= 2
    assert (runs / out["run"] / "online.png").stat().st_size > 10_000
    assert "window 3" in proc.stderr  # progress lines when not on a terminal
    report = cli("report", "--runs-dir", str(runs))  # the latest top-level run, not one of its evolutions
    assert report.returncode == 0, report.stderr
    assert out["run"] in report.stdout and "live windows" in report.stdout and "deployments" in report.stdout
    data = json.loads(cli("report", out["run"], "--runs-dir", str(runs), "--json").stdout)
    assert len(data["windows"]) == out["windows"] and data["live"]["total_time"] > 0
    assert [d["kind"] for d in data["deployments"]][0] == "initial"

    # the next run in this archive recalls what the guard confirmed in earlier ones (baselines
    # are seeds anyway), unless told not to; one more earlier run, by hand, for a bred winner
    default = SimulatorAdapter(SCENARIO).baselines()["default"]
    bred = variant(default, "priority", "def priority(request, now):\n    return request.arrival - 0.5\n")
    archive = Archive(runs / "archive.db")
    try:
        archive.create_run("by-hand", "simulator", {"mode": "online"})
        archive.add_program(bred)
        archive.add_deployment("by-hand", 40.0, "deploy", bred.id, "", {"conditions": {"rate": 20.0}})
        archive.add_deployment("by-hand", 70.0, "confirm", bred.id, "", {})
        baselines = {p.id for p in SimulatorAdapter(SCENARIO).baselines().values()}
        winners = {w["program"]: w["run"] for w in archive.confirmed_winners("simulator") if w["program"] not in baselines}
    finally:
        archive.close()
    assert bred.id in winners
    again = ("evolve", "--adapter", "simulator", "--scenario", SCENARIO, "-o", "requests=600", "--online",
             "--max-windows", "1", "--runs-dir", str(runs), "--json")
    recalled = cli(*again)
    assert recalled.returncode == 0, recalled.stderr
    assert json.loads(recalled.stdout)["recalled"] == len(winners)
    assert f"recalled {len(winners)} winner(s) of {len(set(winners.values()))} earlier online run(s)" in recalled.stderr
    forgot = cli(*again, "--no-recall")
    assert json.loads(forgot.stdout)["recalled"] == 0 and "recalled" not in forgot.stderr
    report = cli("report", json.loads(recalled.stdout)["run"], "--runs-dir", str(runs))
    assert f"seeded from {len(winners)} winner(s)" in report.stdout


def test_the_cli_starts_an_online_run_from_a_policy_file_or_from_a_run(tmp_path):
    """``--policy``: a file (the slots it leaves out keep the first baselines), an offline run's
    champion, or the program an online run ended with."""
    from test_cli import assert_one_line_error, cli

    runs = str(tmp_path / "runs")
    load = ("--adapter", "simulator", "--scenario", SCENARIO, "-o", "requests=600", "--runs-dir", runs, "--json")
    live = (*load, "--online", "--max-windows", "1")

    def started_with(proc):
        """The run's summary and the program it started serving, with that program's source."""
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        archive = Archive(tmp_path / "runs" / "archive.db")
        try:
            first = archive.deployments(out["run"])[0]
            assert first["kind"] == "initial"
            return out, first["program"], archive.program(first["program"]).source
        finally:
            archive.close()

    mine = tmp_path / "mine.py"
    mine.write_text("def dispatch(request, replicas, now):\n    return len(replicas) - 1\n")
    online, program, source = started_with(cli("evolve", *live, "--policy", str(mine)))
    assert source.startswith(mine.read_text()) and "def schedule(" in source and "def priority(" in source
    assert program != SimulatorAdapter(SCENARIO).baselines()["default"].id

    offline = cli("evolve", *load, "--generations", "1", "--population", "4", "--train-snapshots", "1",
                  "--held-out-snapshots", "1")
    assert offline.returncode == 0, offline.stderr
    champion = json.loads(offline.stdout)
    assert started_with(cli("evolve", *live, "--policy", champion["run"]))[1] == champion["champion"]
    assert started_with(cli("evolve", *live, "--policy", online["run"]))[1] == online["final_policy"]

    assert_one_line_error(cli("evolve", *load, "--policy", str(mine)), "add --online")
    assert_one_line_error(cli("evolve", *live, "--policy", "nope"), "no such file, and no run of that id")
    assert_one_line_error(cli("evolve", *live, "--policy", "nope", "--runs-dir", str(tmp_path / "none")),
                          "no such file, and no archive")
    assert not (tmp_path / "none").exists()
    hostile = tmp_path / "hostile.py"
    hostile.write_text("import os\ndef dispatch(request, replicas, now):\n    return 0\n")
    assert_one_line_error(cli("evolve", *live, "--policy", str(hostile)), "rejected", "import of 'os'")


def test_online_mistakes_are_one_line_errors(tmp_path):
    from test_cli import cli

    proc = cli("evolve", "--adapter", "simulator", "--online", "--resume", "x", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "error" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("evolve", "--adapter", "simulator", "--online", "--window", "-3", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "must be positive" in proc.stderr
    proc = cli("evolve", "--adapter", "simulator", "--online", "--replan-margin", "-0.05", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "must be zero or more" in proc.stderr and "Traceback" not in proc.stderr
    from conftest import EXAMPLE

    proc = cli("evolve", "--adapter", str(EXAMPLE), "--online", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "has no live system" in proc.stderr and "Traceback" not in proc.stderr


def test_report_lists_the_runs_with_what_each_ended_with(tmp_path):
    """``report --list``: newest first, an online run's evolutions counted with it rather than
    listed, and each run's program the one ``--policy RUN`` would take. A run that is not there
    is one line naming the latest runs, not the online run's evolutions (before, only those)."""
    from conftest import EXAMPLE
    from test_cli import cli

    runs = str(tmp_path / "runs")
    offline = json.loads(cli("evolve", "--adapter", str(EXAMPLE), "--generations", "1", "--population", "4",
                             "--runs-dir", runs, "--json").stdout)
    online = json.loads(cli("evolve", "--adapter", "simulator", "--scenario", SCENARIO, "-o", "requests=600",
                            "--online", "--window", "10", "--evolution-cost", "1", "--runs-dir", runs, "--json").stdout)
    listed = cli("report", "--list", "--runs-dir", runs, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["run"] for r in rows] == [online["run"], offline["run"]]
    assert (rows[0]["mode"], rows[0]["program"]) == ("online", online["final_policy"])
    assert (rows[1]["mode"], rows[1]["program"], rows[1]["status"]) == ("offline", offline["champion"], "done")
    assert rows[1]["progress"] == f"1 generations, best {offline['fitness']['mean_completion_time']:.6g}"
    table = cli("report", "--list", "--runs-dir", runs)
    assert online["run"] in table.stdout and offline["champion"][:8] in table.stdout
    # a run that is not there: the error names the user's runs, newest first, not the evolutions
    assert online["evolutions"] > 0
    unknown = cli("report", "nope", "--runs-dir", runs)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert f"no run 'nope' in {runs}/archive.db (latest: {online['run']}, {offline['run']})" in unknown.stderr


def test_a_killed_online_run_keeps_its_windows_and_says_how_to_go_on(tmp_path):
    """An online run killed mid-run keeps the windows it served; ``--resume`` of it, or of one
    of its evolutions, is one line (the live system, and the snapshots its evolutions bred on,
    are gone; before, it ran an offline evolution on the stored config and failed with an
    IndexError), and the command that line gives starts a new run from what it served last."""
    import os
    import shlex
    import signal
    import sqlite3
    import subprocess
    import time

    from test_cli import CLI, assert_one_line_error, cli

    runs = tmp_path / "runs"
    proc = subprocess.Popen(CLI + ["evolve", "--adapter", "simulator", "--scenario", "mixed", "--online",
                                   "--evolution-cost", "1", "--runs-dir", str(runs), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db, deadline, windows = runs / "archive.db", time.time() + 120, 0
    while time.time() < deadline and windows < 6 and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db) as con:
                windows = con.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        except sqlite3.Error:  # not created yet
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    archive = Archive(db)
    try:
        runs_kept = [archive.run(r["id"]) for r in archive.runs()]
        run = next(r for r in runs_kept if r["config"].get("mode") == "online")
        kept = archive.windows(run["id"])
        evolutions = [r["id"] for r in runs_kept if r["config"].get("parent") == run["id"]]
    finally:
        archive.close()
    assert run["status"] == "running" and len(kept) >= 6 and evolutions, "the kill did not land mid-run"

    report = " ".join(cli("report", run["id"], "--runs-dir", str(runs)).stdout.split())  # unwrapped
    assert "not finished" in report and f"--policy {run['id']}" in report
    refused = cli("evolve", "--resume", run["id"], "--runs-dir", str(runs))
    assert_one_line_error(refused, "is an online run", "cannot be resumed", f"--policy {run['id']}")
    with sqlite3.connect(db) as con:  # as a kill during that evolution leaves it
        con.execute("UPDATE runs SET status='running' WHERE id=?", (evolutions[0],))
    assert_one_line_error(cli("evolve", "--resume", evolutions[0], "--runs-dir", str(runs)),
                          f"is an evolution of online run {run['id']}", "cannot be resumed on its own")

    suggested = shlex.split(refused.stderr.split("`")[1])
    assert suggested[:2] == ["autopoiesis", "evolve"] and "--scenario" in suggested
    again = cli(*suggested[1:], "--max-windows", "1", "--json")
    assert again.returncode == 0, again.stderr
    archive = Archive(db)
    try:
        assert archive.deployments(json.loads(again.stdout)["run"])[0]["program"] == kept[-1]["policy"]
    finally:
        archive.close()


def _compiled(adapter, program):
    from autopoiesis.sandbox import compile_policy

    return compile_policy(program.source, adapter.slots(), program.id)


def test_the_twin_shows_a_candidate_the_cluster_changes_the_live_plan_ignored():
    """``never`` leaves GPUs that joined idle. A snapshot taken afterwards carries that join
    as unanswered, so ``on_change`` re-plans onto them in the replay (and, deployed live,
    does the same at once); a spot notice's announced departure is in the snapshot too."""
    adapter = SimulatorAdapter("scale_out")
    programs = adapter.baselines()
    never, on_change = programs["default"], programs["reschedule:on_change"]
    adapter.start(seed=1000)
    adapter.deploy(never, [never])
    adapter.observe(270.0)  # four GPUs joined at 200 s
    snapshot = adapter.window_snapshot(210.0, 270.0, never)
    assert [kind for kind, _ in snapshot.params["unanswered"]] == ["join"]
    stay, replan = (adapter.evaluate(_compiled(adapter, p), snapshot) for p in (never, on_change))
    assert stay["reconfigurations"] == 0 and replan["reconfigurations"] >= 1
    assert replan["total_time"] < stay["total_time"]
    gpus_before = {g for spec in snapshot.params["plan"] for g in spec[0]}
    adapter.deploy(on_change, [never])
    adapter.observe(330.0)
    after = adapter.window_snapshot(300.0, 330.0, on_change).params
    assert {g for spec in after["plan"] for g in spec[0]} > gpus_before and after["unanswered"] == []

    spot = SimulatorAdapter("spot_loss")
    spot.start(seed=1000)
    spot.deploy(never, [never])
    spot.observe(240.0)  # notice at 220 s, leave at 250 s
    params = spot.window_snapshot(180.0, 240.0, never).params
    assert params["unanswered"] == [["notice", [0, 1]]] and params["announced"] == [[70.0, "leave", [0, 1]]]


def test_the_twin_asks_reschedule_what_the_live_window_showed():
    """A candidate shown an unanswered join decides on the live window's statistics in the
    replay, as it will when deployed live, not on an empty window (p99 TTFT 0): a
    condition that is false live must not re-plan on the twin and win a deployment that
    then never re-plans."""
    adapter = SimulatorAdapter("scale_out")
    never = adapter.baselines()["default"]
    adapter.start(seed=1000)
    adapter.deploy(never, [never])
    adapter.observe(270.0)  # overloaded: the live window's p99 TTFT is far above a second
    snapshot = adapter.window_snapshot(210.0, 270.0, never)
    assert snapshot.params["window"]["p99_ttft"] > 1.0
    when_calm, when_slow = (variant(never, "reschedule", f"def reschedule(window, cluster, plan, cost_model):\n"
                                                         f"    return window.p99_ttft {op} 1.0\n") for op in "<>")
    calm, slow = (adapter.evaluate(_compiled(adapter, p), snapshot) for p in (when_calm, when_slow))
    assert calm["reconfigurations"] == 0 and slow["reconfigurations"] >= 1
    plan = adapter.window_snapshot(240.0, 270.0, never).params["plan"]
    adapter.deploy(when_calm, [never])  # live, the same candidate keeps the plan
    adapter.observe(290.0)
    assert adapter.window_snapshot(270.0, 290.0, when_calm).params["plan"] == plan


def test_a_champion_that_re_plans_on_the_twin_needs_the_re_plan_margin(tmp_path):
    """A re-plan bets on the twin's forecast and pays reloads up front, so a champion that
    re-plans more than the incumbent on the same replay needs ``replan_margin``; one that
    only routes or orders differently needs ``margin``."""
    from autopoiesis.evaluate import Evaluator, Task

    adapter = SimulatorAdapter("scale_out")
    programs = adapter.baselines()
    never, on_change = programs["default"], programs["reschedule:on_change"]
    reorder = programs["priority:shortest_prompt"]
    adapter.start(seed=1000)
    adapter.deploy(never, [never])
    adapter.observe(270.0)  # four GPUs joined at 200 s, unanswered by never
    snapshot = adapter.window_snapshot(210.0, 270.0, never)
    with Evaluator(adapter, workers=1) as evaluator:
        out = evaluator.evaluate([Task(p.id, p.source, snapshot) for p in (never, on_change, reorder)])
    stays, replans, reorders = (out[(p.id, snapshot.key)] for p in (never, on_change, reorder))
    c = Controller(adapter, OnlineConfig(margin=0.01, replan_margin=0.2), archive=Archive(tmp_path / "a.db"))
    assert c.choice.required(stays, replans) == (0.2, True)
    assert c.choice.required(stays, reorders) == (0.01, False)
    assert c.choice.required(replans, stays) == (0.01, False)  # staying put is no bet


def test_a_slots_code_id_follows_the_helpers_and_constants_it_uses():
    from autopoiesis.program import slot_code_id

    base = """import math

SCALE = 2.0
STATE = {"seen": 0}


def _weight(request):
    return math.log1p(request.prompt_tokens) * SCALE


def priority(request, now):
    return request.arrival + _weight(request)


def dispatch(request, replicas, now):
    STATE["seen"] += 1
    return STATE["seen"] % len(replicas)
"""
    helper = base.replace("math.log1p(request.prompt_tokens)", "math.sqrt(request.prompt_tokens)")
    scale = base.replace("SCALE = 2.0", "SCALE = 3.0")
    state = base.replace('{"seen": 0}', '{"seen": 1}')
    ids = {name: {s: slot_code_id(src, s) for s in ("priority", "dispatch")}
           for name, src in (("base", base), ("helper", helper), ("scale", scale), ("state", state))}
    assert ids["helper"]["priority"] != ids["base"]["priority"]  # a helper's edit changes its caller's decisions
    assert ids["scale"]["priority"] != ids["base"]["priority"]  # so does a constant the helper reads
    assert ids["helper"]["dispatch"] == ids["scale"]["dispatch"] == ids["base"]["dispatch"]  # dispatch uses neither
    assert ids["state"]["dispatch"] != ids["base"]["dispatch"] and ids["state"]["priority"] == ids["base"]["priority"]
    rebound = base.replace("SCALE = 2.0\n", "SCALE = 2.0\nSCALE = SCALE * 1.5\n")
    first = rebound.replace("SCALE = 2.0", "SCALE = 4.0")
    assert slot_code_id(first, "priority") != slot_code_id(rebound, "priority")  # every binding of a name counts
    branch = base + "\nif SCALE > 1:\n    STATE = {}\n"
    assert all(slot_code_id(branch, s) != slot_code_id(base, s) for s in ("priority", "dispatch"))  # may bind anything
    documented = base.replace("    return request.arrival", '    """Arrival, later for long prompts."""\n    return request.arrival')
    documented = documented.replace("def _weight(request):\n", 'def _weight(request):\n    """Log prompt length."""\n')
    assert slot_code_id(documented, "priority") == ids["base"]["priority"]  # a docstring decides nothing
    empty = 'def priority(request, now):\n    """Only a docstring."""\n'
    assert slot_code_id(empty, "priority") == slot_code_id('def priority(request, now):\n    pass\n', "priority")


def test_of_near_equal_winners_the_smallest_change_is_offered(tmp_path):
    """The twin cannot tell apart gains within the margin: of the candidates that clear it,
    the one that changes the fewest slots goes live (a rolled-back one never does)."""
    from autopoiesis.evaluate import Evaluator, Task

    adapter = SimulatorAdapter("scale_out")
    programs = adapter.baselines()
    never, on_change = programs["default"], programs["reschedule:on_change"]
    rewritten = variant(on_change, "priority", "def priority(request, now):\n    return request.arrival * 1.0\n")
    same = variant(never, "priority", "def priority(request, now):\n    return request.arrival + 0.0\n")
    adapter.start(seed=1000)
    adapter.deploy(never, [never])
    adapter.observe(270.0)  # four GPUs joined at 200 s: re-planning onto them wins big
    snapshot = adapter.window_snapshot(210.0, 270.0, never)
    with Evaluator(adapter, workers=1) as evaluator:
        scores = evaluator.evaluate([Task(p.id, p.source, snapshot) for p in (never, on_change, rewritten, same)])
    assert scores[(rewritten.id, snapshot.key)].metrics == scores[(on_change.id, snapshot.key)].metrics
    c = Controller(adapter, OnlineConfig(), archive=Archive(tmp_path / "a.db"))
    assert c.choice.changes(never, rewritten) == 2 and c.choice.changes(never, on_change) == 1
    assert c.choice.best(never, [rewritten, same, on_change], scores, snapshot.key) is on_change
    c.refused.add(on_change.id)
    assert c.choice.best(never, [rewritten, same, on_change], scores, snapshot.key) is rewritten
    assert c.choice.best(never, [same], scores, snapshot.key) is None  # no gain: nothing to offer
    tied = Controller(adapter, OnlineConfig(margin=0.0), archive=Archive(tmp_path / "b.db"))
    assert tied.choice.best(never, [same], scores, snapshot.key) is None  # a tie is no win, even at margin 0
    assert tied.choice.best(never, [same, on_change], scores, snapshot.key) is on_change


def swapped_at(scenario: str, at: float):
    """(adapter, default, reschedule:on_change, default's plan): a live simulator (seed 1000)
    that served ``default`` until ``at`` s and has ``reschedule:on_change`` deployed since."""
    adapter = SimulatorAdapter(scenario)
    programs = adapter.baselines()
    never, on_change = programs["default"], programs["reschedule:on_change"]
    adapter.start(seed=1000)
    adapter.deploy(never, [never])
    adapter.observe(at)
    left = adapter.window_snapshot(at - 30.0, at, never).params["plan"]
    adapter.deploy(on_change, [never])
    return adapter, never, on_change, left


def test_the_guard_replays_the_incumbent_from_the_plan_it_left():
    """After a re-planning newcomer changed the plan live, the guard's counterfactual starts
    from the plan the incumbent had, not from the newcomer's (which it would get for free)."""
    adapter, never, on_change, left = swapped_at("scale_out", 240.0)
    adapter.observe(300.0)
    live = adapter.window_snapshot(270.0, 300.0, on_change).params
    guard = adapter.window_snapshot(270.0, 300.0, never).params
    assert live["plan"] != left and guard["plan"] == left and guard["unanswered"] == [["join", [4, 5, 6, 7]]]


def test_the_guards_counterfactual_answers_the_gpus_that_came_and_went_since_the_swap():
    """GPUs that leave or join while the guard watches are the incumbent's to answer in its
    replay: its replicas on GPUs that left are gone, as they went live, and the events are
    unanswered. Before, the plan it left still used the lost GPUs: every program's replay of
    that window failed, and the guard, with no counterfactual, called the window clean."""
    from autopoiesis.evaluate import Evaluator, Task

    # notice at 220 s, GPUs 0 and 1 leave at 250 s, 2 and 3 join at 450 s
    adapter, never, on_change, left = swapped_at("spot_loss", 240.0)
    adapter.observe(270.0)
    guard = adapter.window_snapshot(240.0, 270.0, never)
    assert guard.params["plan"] == [entry for entry in left if not {0, 1} & set(entry[0])] != left
    assert guard.params["unanswered"] == [["notice", [0, 1]], ["leave", [0, 1]]]
    with Evaluator(adapter, workers=1) as evaluator:
        scores = evaluator.evaluate([Task(p.id, p.source, guard) for p in (never, on_change)])
    assert all(outcome.ok and outcome.metrics["total_time"] > 0 for outcome in scores.values())
    adapter.observe(480.0)
    later = adapter.window_snapshot(450.0, 480.0, never).params
    assert later["unanswered"] == [["notice", [0, 1]], ["leave", [0, 1]], ["join", [2, 3]]]


def test_a_horizon_repeats_the_windows_arrivals_and_not_the_backlog(adapter, default):
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(60.0)
    plain = adapter.window_snapshot(30.0, 60.0, default).params
    longer = adapter.window_snapshot(30.0, 60.0, default, horizon_s=90.0).params
    backlog, arrived = plain["requests"][: plain["backlog"]], plain["requests"][plain["backlog"]:]
    assert longer["backlog"] == len(backlog) and longer["requests"][: len(backlog)] == backlog
    assert len(longer["requests"]) == len(plain["requests"]) + 2 * len(arrived)
    assert max(r[0] for r in longer["requests"]) == pytest.approx(max(r[0] for r in arrived) + 60.0)
    assert sorted(longer["requests"][len(backlog):]) == longer["requests"][len(backlog):]


def test_the_twin_replays_the_backlog_in_the_order_it_had_live():
    """The requests queued when a window opens arrive at 0 s in the replay, in the order they
    had live, so a candidate whose keys tie there (FCFS: every arrival time is 0) serves them
    in that order, as the incumbent did. Before, they were sorted by prompt, and FCFS replayed
    its own backlog shortest-prompt-first. A candidate with keys of its own orders them by
    those (queuing them ahead in the live order instead cost tail latency: docs/online_measured.md)."""
    from autopoiesis.adapters.simulator.live import twin
    from autopoiesis.sandbox import compile_policy

    adapter = SimulatorAdapter("burst")
    programs = adapter.baselines()
    fcfs, shortest = programs["default"], programs["priority:shortest_prompt"]
    adapter.start(seed=1000)
    adapter.deploy(fcfs, [fcfs])
    adapter.observe(150.0)  # the burst has left a queue
    since, params = 120.0, adapter.window_snapshot(120.0, 150.0, fcfs).params
    n = params["backlog"]
    live = [r for r in adapter.live.sim.requests if r.arrival < since and not (r.finish is not None and r.finish <= since)]
    assert n == len(live) > 100
    live.sort(key=lambda r: (r.first_token is None or r.first_token > since, r.arrival))  # FCFS keys are arrivals
    prompts = [p for _, p, _ in params["requests"][:n]]
    assert prompts == [r.prompt for r in live] and prompts != sorted(prompts)

    def served_in_order(program):
        _, sim = twin(compile_policy(program.source, adapter.slots()), params)
        sim.run()
        backlog = sim.requests[:n]
        return [all(a.first_token <= b.first_token for a, b in zip(mine, mine[1:]))
                for mine in ([r for r in backlog if r.replica is replica] for replica in {r.replica for r in backlog})]

    assert all(served_in_order(fcfs))
    assert not all(served_in_order(shortest))  # its own keys reorder the backlog


def test_the_twin_leaves_the_backlog_on_the_replica_it_had_live():
    """A deployed ``dispatch`` routes what arrives after it; the requests already queued stay on
    their replica. The replay keeps them there too, so a candidate that routes differently is
    not credited (or blamed) for re-routing a backlog it would never move. Before, the backlog
    arrived at 0 s and the candidate's dispatch spread it afresh. A request whose replica is not
    in the replayed plan is routed by the candidate."""
    from autopoiesis.adapters.simulator.live import twin
    from autopoiesis.sandbox import compile_policy

    adapter = SimulatorAdapter("burst")
    programs = adapter.baselines()
    default, round_robin = programs["default"], programs["dispatch:round_robin"]
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(150.0)  # the burst has left a queue on every replica
    params = adapter.window_snapshot(120.0, 150.0, default).params
    n = params["backlog"]
    assert n > 100 and len(params["queued_on"]) == n and None not in params["queued_on"]
    _, sim = twin(compile_policy(round_robin.source, adapter.slots()), params)
    sim.start()
    sim.advance(0.0)
    backlog = sim.requests[:n]
    assert [[list(r.replica.spec.gpus), r.replica.spec.tp, r.replica.spec.pp] for r in backlog] == params["queued_on"]
    counts = sorted(sum(r.replica is replica for r in backlog) for replica in sim.active)
    assert counts[-1] > counts[0] + 1  # round-robin alone would have spread them evenly

    last = sim.active[-1].spec
    moved = next(i for i, on in enumerate(params["queued_on"]) if on != [list(last.gpus), last.tp, last.pp])
    params["queued_on"][moved] = [[99], 1, 1]  # a replica the replayed plan does not have
    to_last = variant(default, "dispatch", "def dispatch(request, replicas, now):\n    return len(replicas) - 1\n")
    _, sim = twin(compile_policy(to_last.source, adapter.slots()), params)
    sim.start()
    sim.advance(0.0)
    assert sim.requests[moved].replica is sim.active[-1]  # routed by the candidate
    assert all(sim.requests[i].replica is not sim.active[-1] for i, on in enumerate(params["queued_on"])
               if i != moved and on != [list(last.gpus), last.tp, last.pp])  # the rest stay where they were


def test_a_deployment_that_keeps_the_order_keeps_one_queue():
    """A new program with the live program's ``priority`` (here, a new dispatch) keys arrivals
    on the same scale, so they join the backlog's queue as if nothing had been deployed: a short
    prompt that arrives after the swap is served ahead of long ones queued before it. A new
    ``priority`` queues the backlog ahead instead. Before, every deployment did, and a program
    that changed only another slot (and lost its priority's docstring, as a function GP writes
    anew does) cost scale_out@2 11% of its total time (docs/online_measured.md, Deployment)."""
    def served_across_the_swap(deployed):
        adapter = SimulatorAdapter("burst")
        shortest = adapter.baselines()["priority:shortest_prompt"]
        adapter.start(seed=1000)
        adapter.deploy(shortest, [shortest])
        adapter.observe(150.0)  # the burst has left a queue
        adapter.deploy(deployed(shortest, adapter), [shortest])
        adapter.observe(math.inf)
        requests = adapter.live.sim.requests
        backlog = [r for r in requests if r.arrival <= 150.0 < r.first_token]
        later = [r for r in requests if r.arrival > 150.0]
        assert len(backlog) > 100
        return sum(1 for b in backlog for r in later if r.replica is b.replica and r.first_token < b.first_token)

    def new_dispatch(shortest, _):  # and the same priority without its docstring, as operators leave it
        dispatch = variant(shortest, "dispatch", "def dispatch(request, replicas, now):\n    return request.id % len(replicas)\n")
        return variant(dispatch, "priority", "def priority(request, now):\n    return request.prompt_tokens\n")

    def fcfs(_, adapter):
        return adapter.baselines()["default"]

    assert served_across_the_swap(new_dispatch) > 0 and served_across_the_swap(fcfs) == 0


def test_the_controller_scores_candidates_over_the_horizon(adapter, default, tmp_path):
    controller = Controller(adapter, OnlineConfig(history=1, horizon=3), Config(population=4, generations=1, workers=1),
                            archive=Archive(tmp_path / "a.db"))
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(60.0)
    controller.incumbent = default
    snapshot = controller._snapshot(30.0, 60.0)
    assert max(r[0] for r in snapshot.params["requests"]) > 60.0  # three windows' worth, not one


def test_a_cluster_change_while_the_guard_watches_is_evolved_for_afterwards(tmp_path):
    """Four GPUs join at 200 s while the guard watches a program deployed at 180 s. The change
    is owed and evolved for as soon as the guard is done: at once when a twin replay of a
    suspect window confirms mid-window (it waited for the window's end, and the GPUs 13 s
    more for a re-plan), at the window's end when the guard confirms there, and not at all
    when that window is the run's last (it started an evolution there that could never deploy)."""
    renamed = variant(SimulatorAdapter("scale_out").baselines()["default"], "priority",
                      "def priority(request, now):\n    return request.arrival + 0.0\n")

    def run(**online) -> Controller:  # each in an archive of its own: no run recalls another's winners
        archive = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        archive.mkdir()
        c = controller(SimulatorAdapter("scale_out", requests=6750), archive, guard_windows=3, **online)  # ~265 s
        c.force(renamed, at=180.0)  # watched from 195 s: the join comes meanwhile
        c.run()
        return c

    c = run()
    confirmed = next(d.time for d in c.deployments if d.kind == "confirm")
    assert confirmed % c.config.window_s > 0  # a twin replay confirmed it mid-window
    after_confirm = next(w for w in c.windows if w.end >= confirmed)
    assert "cluster" in after_confirm.triggers  # owed while the guard watched, started once it was done
    evolved = next(d for d in c.deployments if d.kind in ("deploy", "rejected") and d.time > confirmed)
    assert evolved.time <= confirmed + c.config.evolution_cost_s + 1e-6  # started at the confirmation

    c = run(guard_tolerance=100.0)  # no window suspect, so no replay: the guard confirms at a window's end
    confirmed = next(d.time for d in c.deployments if d.kind == "confirm")
    at_confirm = next(w for w in c.windows if w.end == confirmed)
    assert "cluster" in at_confirm.triggers
    assert any(d.kind in ("deploy", "rejected") and d.time > confirmed for d in c.deployments)

    c = run(guard_tolerance=100.0, max_windows=at_confirm.index + 1)
    assert c.windows[-1].index == at_confirm.index and not c.windows[-1].triggers
    assert [d.kind for d in c.deployments] == ["initial", "deploy", "confirm"]  # no "unfinished" evolution


def test_a_workload_drift_while_the_guard_watches_is_evolved_for_afterwards(tmp_path):
    """length_shift doubles its prompts at 300 s; Page-Hinkley sees it at 360 s, while the guard
    still watches a program deployed at 290 s. The drift was dropped: with no period, nothing
    evolved for the new workload after the guard confirmed. Now it is owed, as a cluster change
    is, and its evolution starts at the confirmation (a twin replay's, mid-window)."""
    shift = SimulatorAdapter("length_shift")
    default = shift.baselines()["default"]
    renamed = variant(default, "priority", "def priority(request, now):\n    return request.arrival + 0.0\n")
    c = controller(shift, tmp_path, window_s=30.0, drift_signals=("mean_prompt",), guard_windows=3, max_windows=16)
    c.force(renamed, at=290.0)  # watched over 300-390 s
    c.run()
    confirmed = next(d.time for d in c.deployments if d.kind == "confirm")
    seen = next(w for w in c.windows if "mean_prompt" in w.triggers)
    assert 300.0 < seen.end < confirmed  # the drift came while the guard watched
    after_confirm = next(w for w in c.windows if w.end >= confirmed - 1e-6)  # a twin check may end mid-window
    assert "mean_prompt" in after_confirm.triggers
    evolved = next(d for d in c.deployments if d.kind in ("deploy", "rejected") and d.time > confirmed)
    assert evolved.time <= confirmed + c.config.evolution_cost_s + 1e-6


def test_a_cluster_change_starts_an_evolution_at_once_not_at_the_windows_end(tmp_path):
    """Four GPUs join at 200 s, inside the 195-210 s window: the evolution for it starts
    within ``step_s`` of the join, so a re-plan onto them need not wait for the window."""
    scale_out = SimulatorAdapter("scale_out", requests=6000)
    c = controller(scale_out, tmp_path, step_s=2.0)  # windows of 15 s, evolutions cost 2 s
    c.run()
    decision = next(d for d in c.deployments if d.kind in ("deploy", "rejected"))
    assert 200.0 <= decision.time <= 200.0 + 2.0 + 2.0
    window = next(w for w in c.windows if w.start <= 200.0 < w.end)
    assert window.triggers == ["cluster"]
    assert sum("cluster" in w.triggers for w in c.windows) == 1  # acted on once, not again at the window's end


def test_the_deploy_timing_benchmark_measures_the_same_policy_deployed_at_different_times():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_timing_noise.py"
    proc = subprocess.run([sys.executable, str(script), "--at", "200", "201", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    times = list(out["total_time"].values())
    assert len(times) == 2 and all(t > 600.0 for t in times)  # the last request arrives near 600 s
    assert out["spread"] == pytest.approx((max(times) - min(times)) / (sum(times) / 2))


def test_the_twin_fidelity_benchmark_compares_the_snapshot_with_the_served_truth():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "twin_fidelity.py"
    proc = subprocess.run([sys.executable, str(script), "--scenario", "burst", "--windows", "420:480", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (window,) = json.loads(proc.stdout)["windows"]
    assert window["part_answered"] > 0 and window["unfinished"] > 0
    # the two known biases: tokens generated before the window are decoded again, and the
    # unfinished requests (under a burst, the long ones) get the window's shorter mean
    assert window["restarted_share"] > 0 > window["estimate_error"]
    assert window["twin_error"] == pytest.approx(window["restarted_share"] + window["estimate_error"])
    bad = subprocess.run([sys.executable, str(script), "--windows", "60:30"], capture_output=True, text=True)
    assert bad.returncode == 2 and "SINCE must be" in bad.stderr and "Traceback" not in bad.stderr


def test_the_deployment_value_benchmark_replays_a_run_and_weighs_each_change(adapter, default, tmp_path):
    """Its method rests on the live system being a function of the deployment schedule: served
    again as it was, the schedule gives the run's own total time; a bad program left out, the run
    is shorter."""
    bad = variant(default, "dispatch", "def dispatch(request, replicas, now):\n    return 0\n")
    c = controller(adapter, tmp_path, guard_windows=2)
    c.force(bad, at=45.0)
    live = c.run()["live"]["total_time"]
    changes = [d for d in c.deployments if d.kind in ("initial", "deploy", "rollback")]
    assert [d.kind for d in changes] == ["initial", "deploy", "rollback"]
    schedule = [(d.time, c.archive.program(d.program).source) for d in changes]
    replayed, without = benchmark("deployment_value").leave_one_out(
        {"scenario": SCENARIO, "requests": REQUESTS}, c.config.live_seed, schedule)
    assert replayed == pytest.approx(live, rel=1e-9)
    assert len(without) == 2 and without[0] < replayed  # everything to one replica for a while cost time


def test_the_paper_benchmark_compares_with_each_static_baseline_shipped_everywhere():
    paper = benchmark("paper")
    summary_of, vs_each_baseline = paper.summary_of, paper.vs_each_baseline

    def row(name, auto, **baselines):
        best = min(baselines, key=baselines.get)
        return {"scenario": name, "autopoiesis_total_time": auto, "baselines": baselines, "best_baseline": best,
                "improvement_vs_best_baseline": (baselines[best] - auto) / baselines[best],
                "improvement_vs_hindsight": 0.0, "improvement_ceiling": 0.1, "improvement_vs_incumbent": 0.0}

    rows = [row("a", 90.0, default=100.0, fcfs=90.0), row("b", 90.0, default=90.0, fcfs=100.0),
            row("stationary", 10.0, default=1.0, fcfs=1.0)]
    each = vs_each_baseline(rows)  # the stationary scenario does not count
    assert each["default"] == pytest.approx({"mean": 0.05, "best": 0.1, "worst": 0.0})
    assert each["fcfs"] == pytest.approx({"mean": 0.05, "best": 0.1, "worst": 0.0})
    rows[1]["baselines"]["fcfs"] = 95.0
    summary = summary_of(rows)
    # per scenario the best baseline ties Autopoiesis; shipped to both, fcfs is the strongest and 2.6% behind
    assert summary["dynamic_mean_improvement_vs_best_baseline"] == 0.0
    assert summary["dynamic_fixed_baseline"] == "fcfs"
    assert summary["dynamic_mean_improvement_vs_fixed_baseline"] == pytest.approx((0 + 5 / 95) / 2)
    assert summary["dynamic_mean_improvement_vs_default"] == pytest.approx(0.05)


def test_the_paper_benchmark_builds_its_llm_arm_with_the_simulator_operator_mix():
    import argparse

    make_llm = benchmark("paper").llm_operators(
        argparse.Namespace(llm=None, llm_url="http://127.0.0.1:9/v1", llm_model="tiny"))
    operators = make_llm(Archive(), "paper-test")  # builds clients only: no call goes out
    names = [op.name for op, _ in operators]
    assert {"llm.Mutate", "llm.Crossover", "recombine.Slots"} <= set(names)
    llm_share = sum(w for op, w in operators if op.name.startswith("llm."))
    assert llm_share == pytest.approx(0.5 * sum(w for _, w in operators))  # the rate it asks for


def test_the_paper_benchmark_runs_every_arm_and_prints_what_the_issue_asks():
    """One short scenario end to end: the acceptance JSON's fields, its arithmetic and its fairness."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "paper.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--scenario", "trace_code", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["scenarios"]
    best = row["best_baseline_total_time"]
    assert row["best_baseline"] == min(row["baselines"], key=row["baselines"].get)
    assert best == row["baselines"][row["best_baseline"]]
    assert row["hindsight_total_time"] <= best  # the tuned best baseline, never worse than itself
    assert row["final_program_static_total_time"] > 0  # the program it ended with, served alone from t=0
    assert row["improvement_vs_best_baseline"] == pytest.approx((best - row["autopoiesis_total_time"]) / best)
    assert row["improvement_vs_best_baseline"] <= row["improvement_ceiling"]
    assert row["hindsight_evaluations"] >= row["autopoiesis_evaluations"] > 0  # hindsight gets at least our budget
    assert isinstance(row["deployments"], int) and isinstance(row["rollbacks"], int)


def test_the_switching_oracle_is_never_worse_than_the_best_static_baseline():
    import multiprocess

    switching = benchmark("switching_oracle")
    oracle, total_time = switching.oracle, switching.total_time

    labels = ["default", "dispatch:round_robin", "reschedule:on_change"]
    with multiprocess.Pool(2) as pool:
        out = oracle("scale_out", 1000, 2, labels, pool)
    statics = {label: total_time("scale_out", 1000, [(0.0, label)]) for label in labels}
    assert out["best_static"] == min(statics, key=statics.get)
    assert out["best_static_total_time"] == min(statics.values())
    assert out["oracle_total_time"] <= out["best_static_total_time"] and out["gain"] >= 0.0
    # the schedule it reports reproduces its total time (switches are real deployments)
    assert total_time("scale_out", 1000, out["schedule"]) == out["oracle_total_time"]
    assert out["schedule"][0][0] == 0.0 and all(a[1] != b[1] for a, b in zip(out["schedule"], out["schedule"][1:]))


def test_the_static_combinations_are_every_mix_of_human_parts_and_include_each_baseline():
    static = benchmark("static_combinations")
    adapter = SimulatorAdapter("mixed", requests=300)
    programs = static.combinations(adapter)
    sizes = [len(slot.baselines) for slot in adapter.slots()]
    assert len(programs) == len({p.id for p in programs.values()}) == math.prod(sizes)
    # paper.py's baselines (default and each one-slot swap) are among them, by their very source
    ids = {p.id for p in programs.values()}
    assert all(p.id in ids for p in adapter.baselines().values())
    assert programs["schedule:search+reschedule:never+dispatch:capacity_jsq+priority:fcfs"].id == \
        adapter.baselines()["default"].id

    out = static.measure(adapter, [1000], workers=2)
    assert out["scored"] == len(programs)  # every human part runs with every other
    assert out["best_baseline"] in adapter.baselines()
    assert out["best_combination_total_time"] <= out["best_baseline_total_time"]
    assert out["gain"] == pytest.approx(
        (out["best_baseline_total_time"] - out["best_combination_total_time"]) / out["best_baseline_total_time"])


def test_the_hindsight_check_tunes_in_sample_and_scores_on_unseen_seeds():
    measure = benchmark("hindsight_out_of_sample").measure

    out = measure(SimulatorAdapter("mixed", requests=600), budget=24, workers=1, tuned_on=(1000,), held_out=(1003,))
    # the tuning starts from the best baseline and keeps the best it scored on the seed it tunes on
    assert out["best_baseline"] in SimulatorAdapter("mixed").baselines() and not out["tuned_is_the_baseline"]
    assert out["in_sample_gain"] > 0.0 and math.isfinite(out["out_of_sample_gain"])
    assert out["out_of_sample_gain"] != out["in_sample_gain"]  # scored on a seed it never saw


def test_a_periodic_champion_that_loses_on_the_stretch_before_is_not_offered(tmp_path):
    """A periodic trigger saw no drift, so the windows before the snapshot are another sample
    of the same workload. On mixed at 570 s, shortest_prompt wins by 3.8% on the snapshot
    (510-570 s) and loses by 2.5% on 450-510 s: it fits that minute's requests. The same
    order with prompts capped at 1024 tokens wins by 3.2% and loses by 0.4% there, within the
    1% margin, and is offered instead."""
    from autopoiesis.evaluate import Evaluator, Task
    from autopoiesis.online import _Job

    adapter = SimulatorAdapter("mixed")
    programs = adapter.baselines()
    default, fit = programs["default"], programs["priority:shortest_prompt"]
    capped = variant(default, "priority", "def priority(request, now):\n    return min(request.prompt_tokens, 1024)\n")
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(570.0)
    c = Controller(adapter, OnlineConfig(window_s=30.0, history=2, margin=0.01), archive=Archive(tmp_path / "a.db"))
    c.incumbent = default
    snapshot = c._snapshot(510.0, 570.0)
    holdout = c._holdout(["period"], 510.0)
    assert c._holdout(["rate"], 510.0) is None and c._holdout(["period", "cluster"], 510.0) is None
    assert c._holdout(["period"], 30.0) is None  # no stretch before the first windows
    with Evaluator(adapter, workers=1) as evaluator:
        scores = evaluator.evaluate([Task(p.id, p.source, s) for p in (default, fit, capped) for s in (snapshot, holdout)])

    def gain(program, snap):
        inc, out = (scores[(p.id, snap.key)].metrics["total_time"] for p in (default, program))
        return (inc - out) / inc

    assert gain(fit, snapshot) > gain(capped, snapshot) > 0.01 and gain(fit, holdout) < -0.02
    assert 0.0 > gain(capped, holdout) > -0.01  # a loss within the margin
    assert c.choice.best(default, [fit, capped], scores, snapshot.key) is fit  # the snapshot alone picks the fit
    job = _Job("evolve", 1, 570.0, 0.0, snapshot, default, holdout=holdout)
    overfit = c.choice.overfit(default, [fit, capped], scores, holdout.key)
    assert list(overfit) == [fit.id] and "total_time" in overfit[fit.id]
    assert c.choice.best(default, [p for p in (fit, capped) if p.id not in overfit], scores, snapshot.key) is capped
    # concluded, capped goes live, and the reason says why not the one further ahead on the twin
    c.live, c.windows, c.previous = default, [], None
    c.archive.create_run(c.run_id, "simulator", {})
    job.result = (SimpleNamespace(champion=fit, evaluated=3), scores, [fit, capped])
    c._conclude(job, 570.0)
    deployed = c.deployments[-1]
    assert deployed.kind == "deploy" and deployed.program == capped.id, deployed
    assert "; 1 further ahead on the twin lost on the stretch before the snapshot" in deployed.reason
    assert "smallest change" not in deployed.reason  # capped is the best of what could be offered
    assert c.choice.overfit(default, [fit, capped], scores, None) == {}  # no holdout: nothing is held out


def test_only_contenders_are_replayed_on_the_holdout(tmp_path):
    """The holdout can only exclude a candidate that could be offered, one that beats the
    incumbent on the snapshot by the margin, so only those (and the incumbent) are replayed
    there: the offer is the one scoring every candidate there gives."""
    from autopoiesis.evaluate import Evaluator, Task
    from autopoiesis.online import _Job

    class Recording(Evaluator):  # the real evaluator, remembering what it was asked to replay
        asked: list = []

        def evaluate(self, tasks):
            tasks = list(tasks)
            self.asked.extend(tasks)
            return super().evaluate(tasks)

    adapter = SimulatorAdapter("mixed")
    default = adapter.baselines()["default"]
    adapter.start(seed=1000)
    adapter.deploy(default, [default])
    adapter.observe(570.0)
    c = Controller(adapter, OnlineConfig(window_s=30.0, history=2, margin=0.01), archive=Archive(tmp_path / "a.db"),
                   evolution=Config(population=4, generations=1, workers=1, held_out_snapshots=0))
    c.incumbent = default
    snapshot, holdout = c._snapshot(510.0, 570.0), c._holdout(["period"], 510.0)
    job = _Job("evolve", 1, 570.0, 0.0, snapshot, default, holdout=holdout)
    with Recording(adapter, workers=1) as evaluator:
        c.evaluator = evaluator
        c._evolve(job)
        assert job.error is None, job.error
        _, scores, candidates = job.result
        contenders = [p for _, p in c.choice.contenders(default, candidates, scores, snapshot.key)]
        replayed = [t.program_id for t in evaluator.asked if t.snapshot.key == holdout.key]
        assert 1 <= len(contenders) < len(candidates) - 1  # some clear the margin, not all
        assert sorted(replayed) == sorted(p.id for p in [default, *contenders])
        everywhere = {**scores, **evaluator.evaluate([Task(p.id, p.source, holdout) for p in candidates])}
    overfit = c.choice.overfit(default, candidates, scores, holdout.key)
    offered = c.choice.best(default, [p for p in candidates if p.id not in overfit], scores, snapshot.key)  # as live
    everywhere_overfit = c.choice.overfit(default, candidates, everywhere, holdout.key)
    assert offered is c.choice.best(default, [p for p in candidates if p.id not in everywhere_overfit], everywhere,
                                    snapshot.key)
    assert overfit and offered is not None and offered.id not in overfit  # it still keeps the fit one out


class SlowMutate:
    """A test double for a slow LLM operator: gp.Mutate after ``delay_s``. Its first call
    presses Ctrl-C: a real SIGINT to the main thread, which serves (here it waits for the
    evolution's result, as the simulator's serving loop does under a fixed evolution cost)."""

    name, arity = "slow.Mutate", 1

    def __init__(self, delay_s: float):
        from autopoiesis.operators import gp

        self.inner, self.delay_s, self.calls, self.interrupted_at = gp.Mutate(), delay_s, 0, None

    def __call__(self, parents, context):
        import signal
        import threading
        import time

        self.calls += 1
        if self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(self.delay_s)
        return self.inner(parents, context)


def test_ctrl_c_during_an_evolution_stops_it_before_its_next_child(adapter, tmp_path):
    """Ctrl-C does not wait for the evolution in flight: it ends before its next child, and
    both the online run and that evolution's sub-run are marked interrupted."""
    import time

    slow = SlowMutate(delay_s=0.5)  # a whole evolution: 3 generations of 8 children, over 10 s
    c = Controller(adapter, OnlineConfig(window_s=15.0, period=1, drift_signals=(), evolution_cost_s=2.0),
                   Config(population=8, generations=3, workers=1, held_out_snapshots=0),
                   archive=Archive(tmp_path / "archive.db"), operators=[(slow, 1.0)])
    with pytest.raises(KeyboardInterrupt):
        c.run()
    waited = time.monotonic() - slow.interrupted_at
    assert slow.calls == 1 and waited < 3.0
    runs = {r["id"]: r["status"] for r in c.archive.runs()}
    assert runs[c.run_id] == "interrupted"
    assert runs[f"{c.run_id}-e001"] == "interrupted"


def test_a_stopped_evolution_ends_between_children(tmp_path):
    import threading

    from autopoiesis.evolution import Evolution, Stopped

    stop = threading.Event()
    adapter = SimulatorAdapter(SCENARIO, requests=300)

    def on_event(kind, data):
        if kind == "generation" and data["generation"] == 1:
            stop.set()

    evolution = Evolution(adapter, Config(population=4, generations=5, workers=1, held_out_snapshots=0),
                          Archive(tmp_path / "archive.db"), on_event=on_event, stop=stop)
    with pytest.raises(Stopped):
        evolution.run(run_id="stopped")
    assert evolution.archive.run("stopped")["status"] == "interrupted"
    assert evolution.archive.last_generation("stopped") == 1
    resumed = Evolution(adapter, Config(population=4, generations=3, workers=1, held_out_snapshots=0),
                        evolution.archive).run(resume="stopped")
    assert resumed.generations == 3 and evolution.archive.run("stopped")["status"] == "done"


def test_the_reports_median_twin_error_is_the_median(tmp_path):
    """Four windows' errors 4%, 6%, 20%, 30%: the median is 13% (it printed the upper middle, 20%)."""
    from rich.console import Console

    from autopoiesis.online_view import print_report

    archive = Archive(tmp_path / "a.db")
    archive.create_run("r", "SimulatorAdapter", {"mode": "online"})
    for i, error in enumerate((0.30, 0.04, 0.20, 0.06)):
        archive.add_window("r", i, 30.0 * i, 30.0 * (i + 1), "p", {"twin_error": error}, {})
    console = Console(record=True, width=200)
    print_report(console, archive, "r")
    assert "median 13%, mean 15% over 4 window(s)" in console.export_text()


def test_a_periodic_trigger_after_an_early_shift_is_a_drift_trigger_without_a_holdout(tmp_path):
    """Page-Hinkley sets its scale on its first five windows, so a length shift at 60 s
    cannot set it off before 150 s. A periodic trigger stands for "nothing changed" and
    replays the stretch before its snapshot as a holdout; here that stretch is the old
    workload, so the period's two-window test names the shift (mean_prompt) instead, and
    the evolution it starts has no holdout. On stationary, where nothing changes, every
    periodic trigger while requests arrive stays one."""
    from autopoiesis.adapters.simulator.scenario import SCENARIOS

    text = (SCENARIOS / "length_shift.toml").read_text()
    early = tmp_path / "early_shift.toml"
    early.write_text(text.replace("duration_s = 600", "duration_s = 240").replace("[[300, 0.6]]", "[[60, 0.6]]"))
    holdouts = []

    def run(scenario: str) -> Controller:
        c = Controller(SimulatorAdapter(scenario), OnlineConfig(window_s=30.0, period=1, margin=10.0, history=2,
                                                                evolution_cost_s=1.0),
                       Config(population=2, generations=0, workers=1, held_out_snapshots=0), archive=Archive())
        original = c._holdout

        def spy(reasons, since):  # what each evolution was given to check its candidates on
            holdout = original(reasons, since)
            holdouts.append((reasons, holdout))
            return holdout

        c._holdout = spy
        c.run()
        return c

    c = run(str(early))
    moved = [w for w in c.windows if "mean_prompt" in w.triggers]
    assert moved and moved[0].end <= 120.0  # the 4th window: Page-Hinkley is still taking its scale
    assert any(reasons == ["mean_prompt"] and holdout is None for reasons, holdout in holdouts)
    assert any(reasons == ["period"] and holdout is not None for reasons, holdout in holdouts)  # later, settled

    c = run("stationary")
    arriving = [w for w in c.windows if w.arrivals and w.index >= 2 * c.config.history - 1]
    assert len(arriving) >= 15 and all(w.triggers == ["period"] for w in arriving)
