"""The moments a test run stood still, said in one line at its end (a report, not a test).

CI's machine has frozen the real-vLLM tests for 120-706 s at a time (docs/vllm.md), and
whether the test process stood still (a C call holding the GIL, a stop) or the whole
machine did is not known. Two watchers tick every second: a thread in this process and a
separate process. Each notes a tick that comes ``LATE_S`` or more late. Late ticks in both
mean the machine stood still; in this process only, the process did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

LATE_S = 5.0
OUTSIDE = f"""
import os, time
parent, last = {os.getpid()}, time.monotonic()
while os.getppid() == parent:
    time.sleep(1)
    now = time.monotonic()
    if now - last >= {LATE_S}:
        print(f"{{time.time() - (now - last):.0f}} {{now - last:.1f}}", flush=True)
    last = now
"""


class StallWatch:
    def __init__(self):
        self.test = "between tests"  # what runs now, set by the conftest's hook
        self.inside: list[tuple[float, float, str]] = []  # (wall-clock start, seconds, test)
        self.outside: list[tuple[float, float, str]] = []
        self.process = subprocess.Popen([sys.executable, "-c", OUTSIDE], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._tick, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    def _tick(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(1)
            now = time.monotonic()
            if now - last >= LATE_S:
                self.inside.append((time.time() - (now - last), now - last, self.test))
            last = now

    def _read(self) -> None:
        for line in self.process.stdout:
            start, seconds = line.split()
            self.outside.append((float(start), float(seconds), self.test))

    def summary(self) -> str:
        return f"stalls of {LATE_S:g} s or more: in this process {_said(self.inside)}; in a separate process " \
               f"{_said(self.outside)}"

    def stop(self) -> None:
        self.process.terminate()


def _said(stalls: list[tuple[float, float, str]]) -> str:
    if not stalls:
        return "none"
    start, seconds, test = max(stalls, key=lambda s: s[1])
    return (f"{len(stalls)}, {sum(s[1] for s in stalls):.0f} s in all, the longest {seconds:.0f} s from "
            f"{time.strftime('%H:%M:%S', time.gmtime(start))} UTC ({test})")
