"""The moments a test run stood still, said in one line at its end (a report, not a test).

CI's machine has frozen the real-vLLM tests for 120-735 s at a time (docs/vllm.md). Two
watchers tick every second: a thread in this process and a separate process. Each notes a
tick that comes ``LATE_S`` or more late. Late ticks in both mean the machine stood still; in
this process only, the process did (a thread holding the GIL in a C call, or in the kernel).
CI's runs so far saw them in this process only, so the thread also says what the machine
waited on meanwhile, from the kernel's counters read at each tick: pressure stall time
(``/proc/pressure``: tasks waiting on memory, on IO, for a CPU), CPU time the hypervisor
took (``steal`` in ``/proc/stat``), and the least memory available over the run. A test
whose helper thread stood still while others ran (a hold, not a stall) says so through
``note_hold``, with where that thread stood; the longest holds are said above the line.
A hold is also said at once (``say_now``, to the terminal, past pytest's capture), with what
the kernel says of the thread (``in_kernel``): a run that CI ends for its time still shows
where it stood, as its end would not. For the same reason the separate process, which the
watch thread sends a beat each tick, says at once what the kernel says of the test process
and those under it when the beats stop for ``SILENT_S``: a process frozen whole (a thread
holding the GIL, every thread in the kernel) can say nothing of itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter

LATE_S = 5.0
SILENT_S = 60.0  # the separate process says at once what the kernel says of a test process this long silent
SILENT_SAID_AGAIN_S = 300.0
OUTSIDE = f"""
import os, sys, threading, time
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import stall_watch
parent, last, beat, said = {os.getpid()}, time.monotonic(), [time.monotonic()], 0.0

def beats():  # the test process's watch thread writes a line each tick
    for _ in sys.stdin:
        beat[0] = time.monotonic()

threading.Thread(target=beats, daemon=True).start()
while os.getppid() == parent:
    time.sleep(1)
    now = time.monotonic()
    if now - last >= {LATE_S}:
        print(f"{{time.time() - (now - last):.0f}} {{now - last:.1f}}", flush=True)
    last, silent = now, now - beat[0]
    if silent < {SILENT_S}:
        said = 0.0
    elif not said or silent - said >= {SILENT_SAID_AGAIN_S}:
        said = silent
        lines = stall_watch.processes_in_kernel(parent)
        os.write(2, (f"\\n[stall watch, from a separate process, {{stall_watch._clock(time.time())}} UTC] the test "
                     f"process has not ticked for {{silent:.0f}} s; its main thread: "
                     f"{{stall_watch.in_kernel(parent)}}\\n" + "\\n".join(lines) + "\\n").encode(errors="replace"))
"""
WAITS = {"memory": "memory", "io": "IO", "cpu": "the CPU"}  # /proc/pressure's resources, as they are said
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
HOLDS_SAID = 3  # the longest holds said at the end, each with its stack
_watch: StallWatch | None = None  # the run's watch, for note_hold


def note_hold(what: str, seconds: float, stack: str) -> None:
    """Note that ``what`` (a thread a test depends on) was held ``seconds``, standing at ``stack``:
    a test that waits such a hold out passes, and this keeps where it stood for the run's end."""
    if _watch is not None:
        _watch.holds.append((seconds, what, _watch.test, stack))


def say_now(text: str) -> None:
    """Write ``text`` to the run's terminal at once, whatever pytest captures."""
    if _watch is not None:
        os.write(_watch.terminal, f"\n[stall watch {_clock(time.time())} UTC] {text}\n".encode(errors="replace"))


SYSCALLS = {0: "read", 1: "write", 3: "close", 7: "poll", 9: "mmap", 17: "pread64", 18: "pwrite64", 23: "select",
            35: "nanosleep", 45: "recvfrom", 47: "recvmsg", 56: "clone", 57: "fork", 58: "vfork", 59: "execve",
            61: "wait4", 62: "kill", 74: "fsync", 82: "rename", 202: "futex", 230: "clock_nanosleep",
            232: "epoll_wait", 247: "waitid", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
            435: "clone3"}  # x86_64's numbers of the calls a held thread is likely in


def in_kernel(pid: int, tid: int | None = None) -> str:
    """What the kernel says of a thread (by default a process's main one): its state (D: deaf
    to signals, waiting on a disk or the kernel), the kernel function it waits in, its system
    call and the innermost frames of its kernel stack, as far as this user may read them."""
    task = f"/proc/{pid}/task/{tid or pid}"
    said = [f"state {_state(task)}"]
    if (wchan := _read(f"{task}/wchan").strip()) not in ("", "0"):
        said.append(f"waiting in {wchan}")
    call = _read(f"{task}/syscall").split()
    if call and call[0].lstrip("-").isdigit():
        said.append("not in a system call" if call[0] == "-1" else
                    f"system call {SYSCALLS.get(int(call[0]), call[0])}")
    elif call:
        said.append(call[0])  # "running"
    if stack := [line.split()[-1].split("+")[0] for line in _read(f"{task}/stack").splitlines()[:6]]:
        said.append("kernel stack " + " < ".join(stack))
    return ", ".join(said)


def processes_in_kernel(pid: int) -> list[str]:
    """One line for ``pid`` and each process under it (12 at most): its threads by state, and
    where the threads in state D wait."""
    lines, todo = [], [pid]
    while todo and len(lines) < 12:
        p = todo.pop(0)
        tasks = _listdir(f"/proc/{p}/task")
        states = {t: _state(f"/proc/{p}/task/{t}") for t in tasks}
        counts = ", ".join(f"{n} {s}" for s, n in Counter(states.values()).most_common())
        deaf = "".join(f"; thread {t} {in_kernel(p, int(t))}" for t in tasks if states[t] == "D")
        command = " ".join(_read(f"/proc/{p}/cmdline").replace("\0", " ").split())[:70]
        lines.append(f"{p} {command}: {len(tasks)} threads ({counts}){deaf}")
        for t in tasks:
            todo += [int(c) for c in _read(f"/proc/{p}/task/{t}/children").split()]
    return lines


def _state(task: str) -> str:
    """A thread's state letter (R running, S sleeping, D deaf to signals, T stopped, Z ended)."""
    fields = _read(f"{task}/stat").rsplit(")", 1)[-1].split()
    return fields[0] if fields else "?"


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def counters() -> dict[str, float]:
    """Seconds the machine has spent waiting, by cause, since boot (causes not readable here are left out)."""
    out = {}
    for resource in WAITS:
        try:
            with open(f"/proc/pressure/{resource}") as f:  # "some avg10=.. avg60=.. avg300=.. total=<us>"
                out[resource] = int(f.readline().rsplit("total=", 1)[1]) / 1e6
        except (OSError, IndexError, ValueError):
            pass
    try:
        with open("/proc/stat") as f:  # "cpu user nice system idle iowait irq softirq steal ..."
            out["stolen"] = int(f.readline().split()[8]) * TICK_S
    except (OSError, IndexError, ValueError):
        pass
    return out


def available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration, ValueError):
        return float("nan")


class StallWatch:
    def __init__(self):
        self.test = "between tests"  # what runs now, set by the conftest's hook
        self.inside: list[tuple[float, float, str, dict]] = []  # (wall-clock start, seconds, test, waits meanwhile)
        self.outside: list[tuple[float, float, str, dict]] = []
        self.least_memory = (float("inf"), 0.0)  # (GiB available, when)
        self.holds: list[tuple[float, str, str, str]] = []  # (seconds, what, test, stack), from note_hold
        self.terminal = os.dup(2)  # made before any test: pytest captures fd 2 only while a test runs
        self.process = subprocess.Popen([sys.executable, "-c", OUTSIDE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        threading.Thread(target=self._tick, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()
        global _watch
        _watch = self

    def _tick(self) -> None:
        last, before = time.monotonic(), counters()
        while True:
            time.sleep(1)
            now, after = time.monotonic(), counters()
            if now - last >= LATE_S:
                waits = {k: after[k] - before[k] for k in after if k in before}
                self.inside.append((time.time() - (now - last), now - last, self.test, waits))
            last, before = now, after
            try:
                self.process.stdin.write("\n")  # a beat for the separate process
                self.process.stdin.flush()
            except (OSError, ValueError):  # it has ended
                pass
            memory = available_gib()
            if memory < self.least_memory[0]:
                self.least_memory = (memory, time.time())

    def _read(self) -> None:
        for line in self.process.stdout:
            start, seconds = line.split()
            self.outside.append((float(start), float(seconds), self.test, {}))

    def summary(self) -> str:
        gib, when = self.least_memory
        memory = f"; the least memory available {gib:.1f} GiB at {_clock(when)} UTC" if gib < float("inf") else ""
        holds = "".join(f"\n{what} held {seconds:.0f} s in {test}, standing at:\n{stack.rstrip()}"
                        for seconds, what, test, stack in sorted(self.holds, reverse=True)[:HOLDS_SAID])
        return f"{holds.lstrip()}\n" * bool(holds) + \
            f"stalls of {LATE_S:g} s or more: in this process {_said(self.inside)}; in a separate process " \
            f"{_said(self.outside)}{memory}"

    def stop(self) -> None:
        self.process.terminate()


def _said(stalls: list[tuple[float, float, str, dict]]) -> str:
    if not stalls:
        return "none"
    start, seconds, test, waits = max(stalls, key=lambda s: s[1])
    said = (f"{len(stalls)}, {sum(s[1] for s in stalls):.0f} s in all, the longest {seconds:.0f} s from "
            f"{_clock(start)} UTC ({test})")
    if waits:
        causes = ", ".join(f"{waits[k]:.0f} s on {said}" for k, said in WAITS.items() if k in waits)
        stolen = f", {waits['stolen']:.0f} s of CPU taken by the hypervisor" if "stolen" in waits else ""
        said += f", in which the machine's tasks waited {causes}{stolen}"
    return said


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(unix))
