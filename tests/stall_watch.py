"""The moments a test run stood still, said in one line at its end (a report, not a test).

CI's machine has frozen the real-vLLM tests for 120-735 s at a time (docs/vllm_measured.md). Two
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
holding the GIL, every thread in the kernel) can say nothing of itself. What it cannot read,
the Python stacks of a frozen process, the process writes itself: the separate process sends
it ``DUMP_SIGNAL``, whose handler (``faulthandler.register``) runs in C, needs no GIL, and
writes every thread's stack to a file that both watchers read. (Not
``faulthandler.dump_traceback_later``: its watchdog thread's lock, copied held into a forked
child, hangs the child at its exit.) A stall also says how much CPU this process used in it,
which thread used most, and how long its threads waited for a CPU: a thread spinning with
the GIL held uses the whole stall, a process waiting on the kernel next to none, and a
process starved by the machine's load neither, its threads runnable and waiting. Then who
starved it: a stall (and the separate process, of a silence) says how busy and idle each
CPU was meanwhile and which processes on the machine used most, and a held thread's kernel
view says which CPUs it may run on and at what priority. CI's stalls so far had the test
process's threads runnable for minutes with next to no CPU, while the separate process ran.
The CPUs' counters (busy, idle, steal) add up to their time only while they run and
count: a stall says how far short they fell, and how much of it the separate process stood
still too. The real-vLLM tests stalled here in most runs, 9-33 s while a server served a
burst: its engine core and worker were charged all of it and nothing else on the machine
ran, while each CPU took its timer's interrupts all along (so a stall also says how many
each CPU took). The cause was each launched server's session of its own, a scheduling group
of its own under the kernel's autogroups; since servers start in the caller's session these
lines have said none (docs/vllm.md, Limits).
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

LATE_S = 5.0
SILENT_S = 60.0  # the separate process says at once what the kernel says of a test process this long silent
SILENT_SAID_AGAIN_S = 300.0
DUMP_SIGNAL = signal.SIGUSR2  # on which this process writes its threads' stacks, sent when it is silent
OUTSIDE = """
import json, os, sys, threading, time
sys.path.insert(0, {here!r})
import stall_watch
parent, last, beat, said = {parent}, time.monotonic(), [time.monotonic()], 0.0
base = (stall_watch.cpus(), stall_watch.processes())  # the machine's CPU counters while the beats came

def beats():  # the test process's watch thread writes a line each tick
    for _ in sys.stdin:
        beat[0] = time.monotonic()

threading.Thread(target=beats, daemon=True).start()
while os.getppid() == parent:
    time.sleep(1)
    now = time.monotonic()
    if now - last >= {late}:
        print(json.dumps({{"late": [time.time() - (now - last), now - last]}}), flush=True)
    last, silent = now, now - beat[0]
    if silent < 2:  # a beat since the last tick
        base = (stall_watch.cpus(), stall_watch.processes())
    if silent < {silent}:
        said = 0.0
    elif not said or silent - said >= {again}:
        if not said:  # once a silence: its stacks, written by the signal's handler in C, without the GIL
            os.kill(parent, {signal})
            time.sleep(1)
            last = time.monotonic()  # this wait is not a stall of this process
        said = silent
        text = stall_watch.frozen(parent, silent, {dump!r}, base)
        os.write(2, f"\\n[stall watch, from a separate process, {{stall_watch._clock(time.time())}} UTC] {{text}}\\n"
                 .encode(errors="replace"))
        print(json.dumps({{"said": text}}), flush=True)
"""
WAITS = {"memory": "memory", "io": "IO", "cpu": "the CPU"}  # /proc/pressure's resources, as they are said
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
HOLDS_SAID = 3  # the longest holds said at the end, each with its stack
STACKS_SAID = 24  # lines of stacks said at the end
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


POLICIES = {"0": "SCHED_OTHER", "1": "SCHED_FIFO", "2": "SCHED_RR", "3": "SCHED_BATCH", "5": "SCHED_IDLE",
            "6": "SCHED_DEADLINE"}
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
    return ", ".join(said + [placement(task)])


def placement(task: str) -> str:
    """Where the kernel may run a thread and with what share: its allowed CPUs, the CPU it ran
    on last, its nice value and policy (a thread pinned to a busy CPU, or of low priority,
    waits there while another CPU idles)."""
    allowed = next((line.split(":", 1)[1].strip() for line in _read(f"{task}/status").splitlines()
                    if line.startswith("Cpus_allowed_list:")), "?")
    fields = _read(f"{task}/stat").rsplit(")", 1)[-1].split()  # from field 3, state
    if len(fields) < 39:
        return f"may run on CPUs {allowed}"
    policy = POLICIES.get(fields[38], f"policy {fields[38]}")
    return f"may run on CPUs {allowed}, last on CPU {fields[36]}, nice {fields[16]}, {policy}"


def processes_in_kernel(pid: int) -> list[str]:
    """One line for ``pid`` and each process under it (12 at most): its threads by state, and
    where the threads in state D wait (and, in ``pid`` itself, those running, state R)."""
    lines, todo = [], [pid]
    while todo and len(lines) < 12:
        p = todo.pop(0)
        tasks = _listdir(f"/proc/{p}/task")
        states = {t: _state(f"/proc/{p}/task/{t}") for t in tasks}
        counts = ", ".join(f"{n} {s}" for s, n in Counter(states.values()).most_common())
        shown = ("D", "R") if p == pid else ("D",)
        deaf = "".join(f"; thread {t} {in_kernel(p, int(t))}" for t in tasks if states[t] in shown)
        command = " ".join(_read(f"/proc/{p}/cmdline").replace("\0", " ").split())[:70]
        lines.append(f"{p} {command}: {len(tasks)} threads ({counts}){deaf}")
        for t in tasks:
            todo += [int(c) for c in _read(f"/proc/{p}/task/{t}/children").split()]
    return lines


def frozen(pid: int, silent: float, dump: str, base: tuple[dict, dict] | None = None) -> str:
    """What a separate process can say of test process ``pid``, silent for ``silent`` seconds: the
    kernel's view of it and the processes under it, its threads' Python stacks from ``dump``, the
    file it writes on ``DUMP_SIGNAL``, and who used the machine's CPUs since ``base`` (``cpus()``
    and ``processes()`` read at its last beat)."""
    stacks = condense(_read(dump))
    machine = f"; since its last beat {cpu_users(*base, cpus(), processes(), seconds=silent)}" if base else ""
    return (f"the test process has not ticked for {silent:.0f} s{machine}; its main thread: {in_kernel(pid)}\n"
            + "\n".join(processes_in_kernel(pid)) + "\nits threads in Python (on a signal, "
            + (f"{SILENT_S:g} s in):\n" + "\n".join(stacks) if stacks else "nothing written: no thread of it ran "
               "the handler)"))


FRAME = re.compile(r'\s+File "(.*)", line (\d+) in (.*)')


def condense(dump: str, names: dict[int, str] | None = None, frames: int = 4) -> list[str]:
    """A faulthandler dump of every thread, one line per distinct stack: how many threads stand
    there (by name where ``names`` maps their idents), then the innermost ``frames`` frames,
    innermost first."""
    stacks: list[tuple[str, list[str]]] = []
    for line in dump.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            ident = int(line.split("0x", 1)[1].split()[0], 16)
            stacks.append(((names or {}).get(ident, hex(ident)), []))
        elif stacks and (m := FRAME.match(line)):
            stacks[-1][1].append(f"{'/'.join(m[1].split('/')[-2:])}:{m[2]} {m[3]}")
    where: dict[tuple[str, ...], list[str]] = {}
    for name, stack in stacks:
        where.setdefault(tuple(stack[:frames]), []).append(name)
    return [f"  {len(who)} ({', '.join(who[:3])}{', ...' * (len(who) > 3)}): {' < '.join(stack) or '(no frame)'}"
            for stack, who in where.items()]


def thread_cpu(pid: int | str = "self") -> dict[int, float]:
    """The CPU seconds (user and system) each thread of a process has used, and under 0 the
    process's whole, which keeps the time of threads that have ended."""
    used = {int(tid): cpu_seconds(f"/proc/{pid}/task/{tid}/stat") for tid in _listdir(f"/proc/{pid}/task")}
    return used | {0: cpu_seconds(f"/proc/{pid}/stat")}


def waited_for_cpu(pid: int | str = "self") -> dict[int, float]:
    """The seconds each thread of a process (those alive) has spent runnable but waiting for a
    CPU, from the kernel's schedstat: a process starved by the machine's load waits there, one
    whose threads wait on a lock, the GIL or the kernel sleeps instead."""
    waited = {}
    for tid in _listdir(f"/proc/{pid}/task"):
        fields = _read(f"/proc/{pid}/task/{tid}/schedstat").split()  # ns running, ns waiting, time slices
        if len(fields) > 1:
            waited[int(tid)] = int(fields[1]) / 1e9
    return waited


def _waited_between(before: dict[int, float], after: dict[int, float]) -> float:
    """What threads waited for a CPU between two reads of ``waited_for_cpu``: those alive at both
    (a thread that ended takes its count with it; one that began counts from 0)."""
    return sum(w - before.get(tid, 0.0) for tid, w in after.items())


def cpus() -> dict[str, tuple[float, float]]:
    """Busy and idle seconds since boot of each CPU ("cpu0", ...) and of all ("cpu"), from
    ``/proc/stat`` (the hypervisor's share, steal, is neither)."""
    out = {}
    for line in _read("/proc/stat").splitlines():
        name, *ticks = line.split()
        if not name.startswith("cpu") or len(ticks) < 7:
            break
        user, nice, system, idle, iowait, irq, softirq = (int(t) for t in ticks[:7])
        out[name] = ((user + nice + system + irq + softirq) * TICK_S, (idle + iowait) * TICK_S)
    return out


def processes() -> dict[int, float]:
    """The CPU seconds each process on the machine has used (its threads', ended ones too)."""
    return {int(p): cpu_seconds(f"/proc/{p}/stat") for p in _listdir("/proc") if p.isdigit()}


def cpu_users(cpus_before: dict, processes_before: dict, cpus_after: dict, processes_after: dict,
              most: int = 4, seconds: float | None = None) -> str:
    """Who used the machine's CPUs between two reads of ``cpus()`` and ``processes()``: how busy
    and idle each CPU was, and the processes that used most. A process starved while a CPU it
    may use idles was not starved by load; one starved while others use every CPU was; and a
    CPU whose busy and idle time fall well short of the stretch (``seconds``, when given, says
    by how much) did not run (a hypervisor holding it, steal or not) or did not count its
    time; its timer interrupts (``interrupts``) tell which. A process's own CPU time is the
    scheduler's clock, which goes on either way: the one running there is charged all of it."""
    each = [f"{name} {busy - cpus_before[name][0]:.0f} and {idle - cpus_before[name][1]:.0f} s"
            for name, (busy, idle) in cpus_after.items() if name != "cpu" and name in cpus_before]
    busy, idle = (a - b for a, b in zip(cpus_after.get("cpu", (0, 0)), cpus_before.get("cpu", (0, 0))))
    used = {p: s - processes_before.get(p, 0.0) for p, s in processes_after.items()}
    ended = len(processes_before.keys() - processes_after.keys())
    top = sorted(used, key=used.get, reverse=True)[:most]
    users = ", ".join(f"{p} {_read(f'/proc/{p}/comm').strip() or '?'} {used[p]:.0f} s{_other_group(p)}"
                      for p in top if used[p] >= 0.5)
    missing = seconds * len(each) - busy - idle if seconds is not None else 0.0
    return (f"the CPUs were busy {busy:.0f} s and idle {idle:.0f} s (each, busy and idle: {', '.join(each)})"
            + (f", {missing:.0f} s short of {len(each)} CPUs for {seconds:.0f} s (CPU time in no counter: they did "
               f"not run, or did not count it)" if missing >= max(1.0, 0.1 * seconds * len(each)) else "")
            + f", most used by {users}" * bool(users)
            + f"; processes that ended meanwhile, whose part is in the busy time only: {ended}" * bool(ended))


def _other_group(pid: int) -> str:
    """", in scheduling group autogroup-N" for a process outside this one's autogroup (a session of
    its own, where the kernel's autogroups are on): the vLLM servers' stalls were one group
    holding the CPUs from the others (docs/vllm.md, Limits)."""
    theirs, ours = _read(f"/proc/{pid}/autogroup").split()[:1], _read("/proc/self/autogroup").split()[:1]
    return f" in scheduling group {theirs[0].lstrip('/')}" if theirs and ours and theirs != ours else ""


def cpu_seconds(stat: str) -> float:
    """The CPU seconds (user and system) a process or thread has used, from its stat file."""
    fields = _read(stat).rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S if len(fields) > 12 else 0.0  # stat's utime, stime


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


def interrupts() -> dict[str, list[int]]:
    """Interrupts taken since boot per CPU, by kind (``/proc/interrupts``: "LOC" the local timer,
    "RES" rescheduling). A busy CPU takes the timer's interrupt HZ times a second; one that took
    few in a stall was not interrupted (through the vLLM stalls here each took its share, and
    the kernel did switch tasks: docs/vllm_measured.md)."""
    out = {}
    for line in _read("/proc/interrupts").splitlines():
        name, _, rest = line.strip().partition(":")
        if name in ("LOC", "RES"):
            out[name] = [int(v) for v in rest.split()[:os.cpu_count() or 1] if v.isdigit()]
    return out


def interrupts_between(before: dict[str, list[int]], after: dict[str, list[int]]) -> str:
    """The timer and rescheduling interrupts each CPU took between two reads of ``interrupts``."""
    said = [f"{name} " + ", ".join(f"cpu{i} {a - b}" for i, (b, a) in enumerate(zip(before[kind], after[kind])))
            for kind, name in (("LOC", "timer"), ("RES", "rescheduling")) if kind in before and kind in after]
    return f"interrupts taken ({'; '.join(said)})" if said else ""


def available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20
    except (OSError, StopIteration, ValueError):
        return float("nan")


@dataclass
class Stall:
    start: float  # wall clock
    seconds: float
    test: str
    waits: dict = field(default_factory=dict)  # what the machine's tasks waited on meanwhile, by cause
    used: str = ""  # the CPU this process used in it, and by which thread most
    stacks: list = field(default_factory=list)  # its threads' stacks SILENT_S in (condense)
    dumped: float = 0.0  # seconds into it that they were written (well past SILENT_S: as it ended)
    machine: str = ""  # who used the machine's CPUs in it (cpu_users)


class StallWatch:
    def __init__(self):
        self.test = "between tests"  # what runs now, set by the conftest's hook
        self.inside: list[Stall] = []
        self.outside: list[Stall] = []
        self.outside_said: list[str] = []  # what the separate process said of this one, frozen
        self.least_memory = (float("inf"), 0.0)  # (GiB available, when)
        self.holds: list[tuple[float, str, str, str]] = []  # (seconds, what, test, stack), from note_hold
        self.terminal = os.dup(2)  # made before any test: pytest captures fd 2 only while a test runs
        self.dump = tempfile.NamedTemporaryFile("w+", prefix="stall-watch-", suffix=".txt")  # faulthandler's
        faulthandler.register(DUMP_SIGNAL, file=self.dump, all_threads=True)
        self.names: dict[int, str] = {}  # thread names by ident, as faulthandler gives them
        self.native: dict[int, str] = {}  # and by the kernel's thread id
        here = os.path.dirname(os.path.abspath(__file__))
        self.process = subprocess.Popen(
            [sys.executable, "-c", OUTSIDE.format(here=here, parent=os.getpid(), dump=self.dump.name, late=LATE_S,
                                                  silent=SILENT_S, again=SILENT_SAID_AGAIN_S, signal=int(DUMP_SIGNAL))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._tick, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()
        global _watch
        _watch = self

    def _tick(self) -> None:
        before, cpu, queued, last = counters(), thread_cpu(), waited_for_cpu(), time.monotonic()
        machine, irqs = (cpus(), processes()), interrupts()
        while True:
            self._name_threads()
            time.sleep(1)
            # read before the clock: a stall that began in a read, which lets go of the GIL, is in them
            after, cpu_after, queued_after = counters(), thread_cpu(), waited_for_cpu()
            machine_after, irqs_after, now = (cpus(), processes()), interrupts(), time.monotonic()
            if now - last >= LATE_S:
                self._name_threads()
                start = time.time() - (now - last)
                self.inside.append(Stall(start, now - last, self.test,
                                         {k: after[k] - before[k] for k in after if k in before},
                                         _used(cpu, cpu_after, self.native, _waited_between(queued, queued_after)),
                                         *self._take_dump(start),
                                         machine="; ".join(filter(None, (
                                             cpu_users(*machine, *machine_after, seconds=now - last),
                                             interrupts_between(irqs, irqs_after))))))
            last, before, cpu, queued, machine, irqs = now, after, cpu_after, queued_after, machine_after, irqs_after
            try:
                self.process.stdin.write("\n")  # a beat for the separate process
                self.process.stdin.flush()
            except (OSError, ValueError):  # it has ended
                pass
            memory = available_gib()
            if memory < self.least_memory[0]:
                self.least_memory = (memory, time.time())

    def _name_threads(self) -> None:
        """Keep the threads' names, for the stacks and CPU times of a stall, ended threads too."""
        for t in threading.enumerate():
            self.names[t.ident], self.native[t.native_id] = t.name, t.name

    def _take_dump(self, start: float) -> tuple[list[str], float]:
        """The stacks faulthandler wrote in the stall that began at ``start``, if it lasted that
        long, and how far into it; the file is emptied for the next."""
        text = _read(self.dump.name)
        if not text:
            return [], 0.0
        written = os.fstat(self.dump.fileno()).st_mtime - start
        os.ftruncate(self.dump.fileno(), 0)
        os.lseek(self.dump.fileno(), 0, os.SEEK_SET)
        return condense(text, self.names), written

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                said = json.loads(line)
            except ValueError:
                continue
            if "late" in said:
                self.outside.append(Stall(*said["late"], self.test))
            else:
                self.outside_said.append(said["said"])

    def summary(self) -> str:
        gib, when = self.least_memory
        memory = f"; the least memory available {gib:.1f} GiB at {_clock(when)} UTC" if gib < float("inf") else ""
        holds = "".join(f"\n{what} held {seconds:.0f} s in {test}, standing at:\n{stack.rstrip()}"
                        for seconds, what, test, stack in sorted(self.holds, reverse=True)[:HOLDS_SAID])
        lines = [holds.lstrip()] if holds else []
        lines.append(f"stalls of {LATE_S:g} s or more: in this process {_said(self.inside, self.outside)}; in a "
                     f"separate process {_said(self.outside)}{memory}")
        dumped = max(self.inside, key=lambda s: (bool(s.stacks), s.seconds), default=Stall(0, 0, ""))
        if dumped.stacks:  # a dump at its end: the signal waited for the process to go on (it was stopped whole)
            when = "at the end of" if dumped.dumped >= dumped.seconds - 1 else f"{dumped.dumped:.0f} s into"
            lines.append(f"this process's threads {when} its longest stall that was dumped ({dumped.seconds:.0f} s "
                         f"from {_clock(dumped.start)} UTC), by stack, innermost frame first:\n"
                         + "\n".join(dumped.stacks[:STACKS_SAID]))
        if self.outside_said:  # what the kernel said; the stacks are above, named
            kernel = self.outside_said[-1].split("\nits threads in Python")[0]
            lines.append(f"the separate process said ({len(self.outside_said)} times), last:\n"
                         + "\n".join(kernel.splitlines()[:STACKS_SAID]))
        return "\n".join(lines)

    def stop(self) -> None:
        self.process.kill()  # first: unhandled, its signal would end this process
        self.process.wait()
        faulthandler.unregister(DUMP_SIGNAL)


def _used(before: dict[int, float], after: dict[int, float], names: dict[int, str], queued: float) -> str:
    """The CPU this process used between two reads of ``thread_cpu``, and the thread that used
    most (``names`` by native id), or threads that ended meanwhile; and how long its threads
    were runnable but waited for a CPU (``queued``, from ``waited_for_cpu``)."""
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after if tid}
    whole = after.get(0, 0.0) - before.get(0, 0.0)
    tid = max(used, key=used.get, default=0)
    busiest = max(used.get(tid, 0.0), whole - sum(used.values()))
    by = (names.get(tid, f"thread {tid}, not Python's") if busiest == used.get(tid) else
          "threads that ended meanwhile")
    return (f"this process used {whole:.1f} s of CPU in it" + f", most {busiest:.1f} s by {by}" * (busiest >= 0.5)
            + f", and its threads waited {queued:.1f} s for a CPU between them")


def _said(stalls: list[Stall], others: list[Stall] | None = None) -> str:
    """The stalls' count and length, and what is known of the longest; with ``others`` (the
    separate process's), how much of it they share: a stall both saw is the machine's."""
    if not stalls:
        return "none"
    longest = max(stalls, key=lambda s: s.seconds)
    said = (f"{len(stalls)}, {sum(s.seconds for s in stalls):.0f} s in all, the longest {longest.seconds:.0f} s "
            f"from {_clock(longest.start)} UTC ({longest.test})")
    if others is not None:
        end = longest.start + longest.seconds
        shared = sum(max(0.0, min(end, o.start + o.seconds) - max(longest.start, o.start)) for o in others)
        said += f", {shared:.0f} s of it a stall of the separate process too"
    if waits := longest.waits:
        causes = ", ".join(f"{waits[k]:.0f} s on {said}" for k, said in WAITS.items() if k in waits)
        stolen = f", {waits['stolen']:.0f} s of CPU taken by the hypervisor" if "stolen" in waits else ""
        said += f", in which the machine's tasks waited {causes}{stolen}"
    if longest.used:
        said += f"; {longest.used}"
    if longest.machine:
        said += f"; {longest.machine}"
    return said


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(unix))
