"""The ``autopoiesis`` command: evolve, report, serve, bench, simulate, adapters.

A user's mistake (a bad flag, an unknown adapter, a corrupt archive) ends in one
line on stderr and a non-zero exit, never a traceback. Set AUTOPOIESIS_DEBUG=1 to
see the traceback of an unexpected error.

One module per command (``evolve``, ``report``, ``serve`` for serve and bench,
``simulate``, ``adapters``), the flags in ``parser``, what they share in ``common``
and how ``--policy FILE|RUN|PROGRAM`` is found in ``policy``. Each command's module is
imported when it runs, so ``autopoiesis report`` does not load the evolution's.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from autopoiesis.archive import ArchiveError

from .common import (ARCHIVE_NAME, Terminated, UserError, interrupted_status, new_console, parse_options,
                     positive_float, positive_int, stop_signals_interrupt)
from .parser import build_parser


__all__ = ["ARCHIVE_NAME", "Terminated", "UserError", "build_parser", "interrupted_status", "main", "parse_options",
           "positive_float", "positive_int"]


def main(argv: Sequence[str] | None = None) -> int:
    err = new_console(stderr=True)
    try:
        with stop_signals_interrupt():
            return _run(argv)
    except KeyboardInterrupt as e:
        err.print(f"autopoiesis: interrupted{f' ({e})' if isinstance(e, Terminated) else ''}")
        return interrupted_status(e)
    except Exception as e:
        from autopoiesis.adapters.base import AdapterError
        from autopoiesis.evolution import EvolutionError

        if os.environ.get("AUTOPOIESIS_DEBUG"):
            raise
        if isinstance(e, (UserError, AdapterError, ArchiveError, EvolutionError)):
            print(f"autopoiesis: error: {e}", file=sys.stderr)
            return 2
        print(f"autopoiesis: unexpected error: {type(e).__name__}: {e} (AUTOPOIESIS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evolve":
        from .evolve import cmd_evolve

        return cmd_evolve(args)
    if args.command == "report":
        from .report import cmd_report

        return cmd_report(args)
    if args.command == "adapters":
        from .adapters import cmd_adapters

        return cmd_adapters()
    if args.command in ("serve", "bench"):
        from .serve import cmd_serve

        return cmd_serve(args)
    if args.command == "simulate":
        from .simulate import cmd_simulate

        return cmd_simulate(args)
    build_parser().print_help()
    return 2
