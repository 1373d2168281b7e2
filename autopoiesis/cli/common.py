"""What the commands share: the user's-mistake error, stop signals, adapter options, argparse
types (the benchmarks use them too), consoles and the archive of a runs folder."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from autopoiesis.archive import Archive


ARCHIVE_NAME = "archive.db"


class UserError(Exception):
    """Something the user can fix; printed as one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt: a `kill` of autopoiesis,
    a service manager's stop or a closed terminal ends a run as Ctrl-C does, its run marked
    interrupted, its servers stopped and its workers ended, instead of leaving a run that says
    "running" for ever."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: Any) -> None:
    for sig in STOP_SIGNALS:  # a second one ends autopoiesis at once (its servers and workers still end)
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


@contextmanager
def stop_signals_interrupt():
    """While the CLI runs, SIGTERM and SIGHUP raise Terminated; a handler the host set (nohup's
    ignore, an embedding program's own) stays, and main() called from a thread changes nothing."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        installed = {sig: signal.signal(sig, _raise_terminated) for sig in STOP_SIGNALS
                     if signal.getsignal(sig) == signal.SIG_DFL}
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def interrupted_status(e: KeyboardInterrupt) -> int:
    """The shell's exit status for a run ended by a signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` items as adapter options: a VALUE that parses as JSON is that value, else a string."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects KEY=VALUE, got '{item}'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def new_console(stderr: bool = False) -> Console:
    """Stdout (or stderr) console; wide when writing to a file or pipe, so tables and log
    lines stay legible in logs. Markup is off: what it prints holds paths, names and errors
    that are the user's or a program's ('/runs/[old]' is a path, not a style), so emphasis is
    given as ``Text`` styles."""
    console = Console(stderr=stderr, markup=False)
    return console if console.is_terminal else Console(stderr=stderr, width=160, markup=False)


def open_archive(runs_dir: str, create: bool) -> Archive:
    path = Path(runs_dir) / ARCHIVE_NAME
    if not create and not path.exists():
        raise UserError(f"no archive at {path} (run `autopoiesis evolve` first, or pass --runs-dir)")
    return Archive(path)


def positive_int(text: str) -> int:
    """An argparse type (the benchmarks use it too): a mistake is one line of usage, not a traceback."""
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _parse(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _parse(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'") from None
