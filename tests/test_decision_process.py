"""A deployed program served from a decision process of its own (``--isolate``).

Real child processes and pipes. What the serving process cannot bound by itself (one C
call that fans out, memory built in one call: docs/sandbox.md, section 4) costs the child,
and the serving thread gets the incumbent's answer.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from autopoiesis import sandbox
from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.adapters.simulator.engine import RequestInfo
from autopoiesis.decision_process import IsolatedPolicy
from autopoiesis.hot_path import hot_path
from autopoiesis.program import PolicyError, PolicySlot, Program
from processes import alive, ended

SLOTS = [PolicySlot("priority", ("request", "now"), "")]
REQUEST = RequestInfo(1, 2.5, 10, 0)

PROGRAM = """
calls = [0]

def priority(request, now):
    calls[0] += 1
    if now == 1.0:
        return max([[0] * 10 ** 6] * 10 ** 5)[0]  # one C call: 10^5 list comparisons of 0.7 ms
    if now == 2.0:
        return len([0] * 10 ** 9)  # 8 GB in one call
    if now == 3.0:
        while True:
            pass
    if now == 4.0:
        return 1 / 0
    if now == 5.0:
        return sum(range(10 ** 6)) * 0 + sum(sum(range(10 ** 5)) for _ in range(3)) * 0 - 1.0
    return request.arrival + calls[0]
"""


@pytest.fixture
def isolated():
    policy = IsolatedPolicy(PROGRAM, SLOTS, "p", timeout_s=0.05, wait_s=10.0)  # a busy machine's answers are late
    yield policy
    policy.close()


def test_the_program_runs_in_a_child_that_keeps_its_state_between_calls(isolated):
    assert isolated.pid != os.getpid() and alive(isolated.pid)
    assert [isolated.priority(REQUEST, 10.0) for _ in range(3)] == [3.5, 4.5, 5.5]


def test_a_python_loop_times_out_and_an_error_is_reported_and_the_program_is_kept(isolated):
    with pytest.raises(sandbox.DeadlinePassed):
        isolated.priority(REQUEST, 3.0)
    with pytest.raises(PolicyError, match="ZeroDivisionError"):
        isolated.priority(REQUEST, 4.0)
    assert isolated.priority(REQUEST, 10.0) == 5.5  # the third call it answered
    assert not isolated.lost


def test_memory_built_in_one_call_fails_in_the_child_not_the_serving_process(isolated):
    with pytest.raises(PolicyError, match="MemoryError"):
        isolated.priority(REQUEST, 2.0)
    assert isolated.priority(REQUEST, 10.0) == 4.5 and not isolated.lost


def test_one_c_call_that_fans_out_ends_the_child_and_later_calls_fall_back_at_once(isolated):
    pid = isolated.pid
    start = time.monotonic()
    with pytest.raises((PolicyError, sandbox.DeadlinePassed)):  # the CPU limit, or the 1 s wait first
        isolated.priority(REQUEST, 1.0)  # in the serving process: 10,000 x 18 ms, about 3 minutes
    assert time.monotonic() - start < 15
    took, until = [], time.monotonic() + 30
    while not isolated.lost and time.monotonic() < until:  # while the child computes, a call waits for nothing
        start = time.monotonic()
        with pytest.raises((PolicyError, sandbox.DeadlinePassed)):
            isolated.priority(REQUEST, 10.0)
        took.append(time.monotonic() - start)
        time.sleep(0.05)
    assert "CPU limit" in isolated.lost and not alive(pid) and max(took, default=0) < 0.5
    start = time.monotonic()
    with pytest.raises(PolicyError, match="CPU limit"):
        isolated.priority(REQUEST, 10.0)
    assert time.monotonic() - start < 0.1


def test_a_call_given_up_on_while_the_child_still_computes_falls_back_without_waiting(isolated):
    isolated.wait_s = 0.2
    with pytest.raises(sandbox.DeadlinePassed):
        isolated.priority(REQUEST, 1.0)  # a C call: 0.5 s of CPU before the child's end
    start = time.monotonic()
    with pytest.raises(sandbox.DeadlinePassed):
        isolated.priority(REQUEST, 10.0)  # the child is still on the call above
    assert time.monotonic() - start < 0.1


def test_an_answer_given_up_on_is_dropped_when_it_comes(isolated):
    isolated.wait_s = 0.001  # shorter than the call below computes
    with pytest.raises(sandbox.DeadlinePassed):
        isolated.priority(REQUEST, 5.0)
    assert isolated._from.poll(10)  # the late answer is in the pipe
    isolated.wait_s = 10.0
    assert isolated.priority(REQUEST, 10.0) == 4.5  # its own answer, not the late -1.0
    assert not isolated.lost


def test_inputs_that_cannot_travel_fail_the_call_with_the_reason(isolated):
    with pytest.raises(PolicyError, match="its inputs cannot be sent"):
        isolated.priority(lambda: 0, 10.0)
    assert isolated.priority(REQUEST, 10.0) == 3.5


def test_a_rejected_program_starts_no_process_and_one_that_fails_to_load_says_why():
    with pytest.raises(sandbox.Rejected, match="only imports, function definitions"):
        IsolatedPolicy("def priority(r, n):\n    return 1.0\nopen('x')\n", SLOTS)
    with pytest.raises(sandbox.Rejected, match="import of 'os' is not allowed"):
        IsolatedPolicy("import os\ndef priority(r, n):\n    return 1.0\n", SLOTS)


def test_a_deployment_takes_a_child_started_ahead_and_starts_the_next(isolated):
    from autopoiesis import decision_process

    spares = [process.pid for process, _, _ in decision_process._spare]
    assert len(spares) == decision_process.SPARES and all(map(alive, spares)) and isolated.pid not in spares
    second = IsolatedPolicy(PROGRAM, SLOTS, "q")
    try:
        assert second.pid == spares[0] and second.priority(REQUEST, 10.0) == 3.5  # the oldest: the most likely up
        deadline = time.monotonic() + 10  # the next is started on the helper thread
        while len(decision_process._spare) < decision_process.SPARES and time.monotonic() < deadline:
            time.sleep(0.01)
        following = [process.pid for process, _, _ in decision_process._spare]
        assert following[0] == spares[1] and len(following) == 2 and following[1] not in spares
    finally:
        second.close()


def test_a_deployment_does_not_wait_for_the_next_spare_to_start(isolated, monkeypatch):
    """Starting a child is a fork and an exec, which can wait on the kernel (an exec reads the
    interpreter from disk): the thread that deploys serves too, so the next spare starts on
    the helper thread. Here every start is held until the test lets it go."""
    from autopoiesis import decision_process

    decision_process.start_spares(wait=True)
    release, start = threading.Event(), decision_process._start_child
    monkeypatch.setattr(decision_process, "_start_child", lambda: (release.wait(60), start())[1])
    deployed = IsolatedPolicy(PROGRAM, SLOTS, "q")  # takes a ready spare; held here, it would wait 60 s
    try:
        assert deployed.priority(REQUEST, 10.0) == 3.5
        deadline = time.monotonic() + 10  # the helper thread takes the job up
        while decision_process._starting[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert decision_process._starting[0] == 1 and not release.is_set()  # deployed while a start is held
        release.set()
        deadline = time.monotonic() + 30
        while len(decision_process._spare) < decision_process.SPARES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(decision_process._spare) == decision_process.SPARES and decision_process._starting[0] == 0
    finally:
        release.set()
        deployed.close()


def test_close_ends_the_child(isolated):
    pid = isolated.pid
    isolated.close()
    assert ended(pid)


def test_the_child_leaves_its_ending_to_the_server(isolated):
    """Signals meant for the serving process's group (Ctrl-C, a stop, a closed terminal) do not
    end the child: the server stops it when it stops."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(isolated.pid, sig)
    time.sleep(0.2)
    assert alive(isolated.pid) and isolated.priority(REQUEST, 10.0) == 3.5


def test_the_hot_path_answers_every_call_and_counts_what_the_child_could_not():
    adapter = SimulatorAdapter("stationary", requests=50)
    default = adapter.baselines()["default"]
    path = hot_path(Program(PROGRAM), [default], adapter.slots(), isolate=True)  # the other slots: default's
    try:
        child = path._policies[0]
        child.wait_s = 10.0  # a busy machine's answers are late: a given-up call would be a stall
        assert isinstance(child, IsolatedPolicy) and "priority" in path
        fallback_answer = path._policies[-1].priority(REQUEST, 10.0)
        answers = [path.priority(REQUEST, now) for now in (10.0, 2.0, 3.0, 4.0, 1.0)]
        answers.append(path.priority(REQUEST, 10.0))
    finally:
        path.close()
    assert answers[0] == 3.5 and answers[1:] == [fallback_answer] * 5  # the baseline answers for it
    calls, fallbacks, stalls = path.take_counts()
    assert calls == {"priority": 6} and fallbacks == {"priority": 5}
    assert stalls == 0  # the CPU limit ended the fan-out's call well inside the wait
    assert any("CPU limit" in e for e in path.errors) and not alive(child.pid)


def test_a_stopped_child_costs_its_calls_a_stall_each_and_keeps_its_program():
    """A frozen machine, as the kernel can leave a process (SIGSTOP): the serving thread waits
    ``wait_s``, answers from the baseline, counts a stall as well as the fallback, and keeps
    the program, which answers again once it runs."""
    adapter = SimulatorAdapter("stationary", requests=50)
    path = hot_path(Program(PROGRAM), [adapter.baselines()["default"]], adapter.slots(), isolate=True)
    try:
        child = path._policies[0]
        child.wait_s = 10.0
        assert path.priority(REQUEST, 10.0) == 3.5
        child.wait_s = 0.2
        os.kill(child.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            stalled = path.priority(REQUEST, 10.0)
            took = time.monotonic() - start
        finally:
            os.kill(child.pid, signal.SIGCONT)
        assert child._from.poll(10)  # its late answer: until it comes, calls fall back at once
        child.wait_s = 10.0
        again = path.priority(REQUEST, 10.0)
    finally:
        path.close()
    assert stalled == path._policies[-1].priority(REQUEST, 10.0) and 0.2 <= took < 1.0
    assert again == 5.5 and not child.lost  # its third call (the stalled one's answer dropped)
    calls, fallbacks, stalls = path.take_counts()
    assert calls == {"priority": 3} and fallbacks == {"priority": 1} and stalls == 1
    assert list(path.errors) == ["priority: no answer in time (stalled)"]


def test_a_child_whose_server_was_killed_ends_even_while_a_forked_worker_holds_its_pipe(tmp_path):
    """Evaluation workers are forked from the serving process, so they hold copies of the
    pipe to each decision process: the server's death alone does not close it."""
    script = tmp_path / "server.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from autopoiesis.decision_process import IsolatedPolicy, _spare\n"
        "from autopoiesis.program import PolicySlot\n"
        "policy = IsolatedPolicy('def priority(r, n):\\n    return 1.0\\n', [PolicySlot('priority', ('r', 'n'), '')])\n"
        "worker = os.fork()\n"
        "if worker == 0:\n"
        "    os.close(1), os.close(2)  # the test reads the server's output to its end\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(policy.pid, _spare[-1][0].pid, worker, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    child, spare, worker = map(int, proc.stdout.split())
    try:
        deadline = time.monotonic() + 10
        while (alive(child) or alive(spare)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(worker) and not alive(child) and not alive(spare)
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_child_whose_state_outgrows_the_cap_retires_its_program():
    hoarder = IsolatedPolicy("seen = []\n\ndef priority(request, now):\n    seen.extend([now] * 25)\n"
                             "    return now\n", SLOTS, "hoarder", wait_s=10.0)
    try:
        answered = 0
        with pytest.raises(PolicyError, match="retired: its state passed 100000 items"):
            for _ in range(5000):
                hoarder.priority(REQUEST, 1.0)
                answered += 1
        assert answered == 4095 and "retired" in hoarder.lost  # measured every 4096 calls, as on the hot path
        with pytest.raises(PolicyError, match="retired"):
            hoarder.priority(REQUEST, 1.0)
    finally:
        hoarder.close()


def test_a_worker_runs_jobs_and_a_slow_one_is_given_up_without_waiting_again():
    """``Worker``: trusted jobs in a child. One with no answer in ``wait_s`` is given up; while
    the child is still on it the next fails at once; its late answer is dropped; a job that
    ends the child leaves the worker lost, with the reason."""
    from autopoiesis.decision_process import GaveUp, Worker

    worker = Worker(wait_s=10.0)  # a busy machine's answers are late
    try:
        assert worker.run("math:factorial", 5) == 120 and worker.pid != os.getpid()
        worker.wait_s = 0.2
        with pytest.raises(GaveUp):
            worker.run("time:sleep", 1.0)
        start = time.monotonic()
        with pytest.raises(GaveUp):
            worker.run("math:factorial", 3)  # the child is still asleep
        assert time.monotonic() - start < 0.1
        worker.wait_s = 10.0
        assert worker._from.poll(10)  # the sleep's late answer: until it comes, jobs fail at once
        assert worker.run("math:factorial", 4) == 24  # not the sleep's late None
        with pytest.raises(PolicyError, match="exited with code 3"):
            worker.run("os:_exit", 3)
        assert worker.lost and not alive(worker.pid)
    finally:
        worker.close()
