"""Helpers for tests that start real processes."""

import time


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ended(pid: int, patience: float = 10.0) -> bool:
    """Whether process ``pid`` ends within ``patience`` seconds: a killed child takes a moment
    to release its memory, and a decision process is killed at once but not waited for."""
    deadline = time.monotonic() + patience
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
