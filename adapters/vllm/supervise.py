"""Leads one launched vLLM server's process group, and ends the group when autopoiesis dies.

    python supervise.py PARENT_PID GRACE_S COMMAND...

vLLM's API server cannot be trusted to go with its parent: during its startup (half a
minute on a CPU) it ignores SIGTERM and then serves on as an orphan, and killed outright it
leaves its engine core and worker running. So autopoiesis starts this script (standard
library only, run with autopoiesis's own Python) as the group's leader, and the script
starts the server in the group. The kernel signals the script when autopoiesis ends, however
it ends (``PR_SET_PDEATHSIG``, SIGKILL included); the script then sends the group SIGTERM,
waits up to ``GRACE_S`` for the server to exit, and SIGKILLs what is left of the group (the
server's engine processes, itself). SIGTERM itself, which ``servers.stop``
sends the whole group, the script leaves to the server and waits, as it does SIGHUP and SIGINT
sent to the group (by hand, or a hang-up): it exits with the server's own exit status, so
``Popen.poll()`` on it tells what the server did.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PARENT_GONE = signal.SIGUSR1  # what the kernel sends when autopoiesis ends; stop() never sends it


LEFT_TO_THE_SERVER = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # stop() sends the group SIGTERM


def main(parent: int, grace_s: float, command: list[str]) -> int:
    # the server's: SIGTERM as by default (stop() relies on it), the others as the host left them (nohup)
    dispositions = {stop: signal.SIG_IGN if stop != signal.SIGTERM and signal.getsignal(stop) == signal.SIG_IGN
                    else signal.SIG_DFL for stop in LEFT_TO_THE_SERVER}
    for stop in LEFT_TO_THE_SERVER:  # a stop sent to the group is the server's to act on
        signal.signal(stop, signal.SIG_IGN)
    gone: list[int] = []
    signal.signal(PARENT_GONE, lambda *_: gone.append(1))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, PARENT_GONE)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # elsewhere only stop() ends the server
    if os.getppid() != parent:  # autopoiesis ended before the line above
        gone.append(1)

    def as_the_server_gets_them() -> None:  # in the child, before the server's program starts
        for stop, disposition in dispositions.items():
            signal.signal(stop, disposition)

    server = subprocess.Popen(command, preexec_fn=as_the_server_gets_them)
    while server.poll() is None and not gone:
        time.sleep(0.2)
    if gone:
        os.killpg(0, signal.SIGTERM)
        try:
            server.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(0, signal.SIGKILL)  # what is left of the group (its engine processes), this script too
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
