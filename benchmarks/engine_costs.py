"""How well the engine twin's step costs fit the torch model's measured steps on this machine.

    python benchmarks/engine_costs.py [--repeats 5] [-o device=cuda] [-o hidden=1024 ...] [--json]

Times the calibration grid (prefills at 4 prompt lengths, decodes at 5 batch sizes x 5
contexts), fits ``Costs`` as the adapter does, and prints each shape's measured and
predicted time, with the error of the same fit without the squared terms. ``-o KEY=VALUE``
gives the engine's options as the CLI does (``device``, the model's shape, ``max_batch`` ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters.base import AdapterError, load_adapter
from autopoiesis.adapters.engine.engine import fit
from autopoiesis.cli import UserError, parse_options, positive_int

SQUARED = (2, 6)  # the positions of the squared terms in a step's shape


def measured(steps) -> dict[tuple, float]:
    """Each shape's time as the fit sees it: the median of its fastest half of repeats."""
    by_shape: dict[tuple, list[float]] = {}
    for x, seconds in steps:
        by_shape.setdefault(tuple(x), []).append(seconds)
    return {x: statistics.median(sorted(ts)[: max(1, len(ts) // 2)]) for x, ts in by_shape.items()}


def errors(costs, steps) -> list[float]:
    return [costs.step_of(x) / t - 1 for x, t in measured(steps).items()]


def _shape(adapter) -> str:
    return ", ".join(f"{k} {v}" for k, v in adapter.model_shape.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine option, as for the CLI (device=cuda, hidden=1024, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        adapter = load_adapter("engine", parse_options(args.option))
        executor = adapter._executor()  # without torch, or without the GPU asked for: one line
    except (AdapterError, UserError) as e:
        parser.error(str(e))
    from autopoiesis.adapters.engine.model import calibrate

    steps = calibrate(executor, adapter.config, args.repeats)
    costs = fit(steps)
    flat = [(tuple(0.0 if j in SQUARED else v for j, v in enumerate(x)), s) for x, s in steps]
    linear = fit(flat)
    with_sq, without = errors(costs, steps), errors(linear, flat)
    result = {"device": adapter.device, "model": adapter.model_shape, "costs": dataclasses.asdict(costs),
              "max_error": max(map(abs, with_sq)),
              "mean_error": statistics.fmean(map(abs, with_sq)), "max_error_linear": max(map(abs, without)),
              "mean_error_linear": statistics.fmean(map(abs, without))}
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"engine step costs on {adapter.device} ({_shape(adapter)}): "
                        "measured (median of the fastest half of repeats) vs fitted",
                  caption="prefill N: one prompt of N tokens; decode B x C: B sequences, C tokens of context")
    for col in ("step", "measured (ms)", "fitted (ms)", "error", "error, no squares"):
        table.add_column(col, justify="left" if col == "step" else "right", no_wrap=True)
    for (x, t), e, e0 in zip(measured(steps).items(), with_sq, without):
        label = f"prefill {x[1]:.0f}" if x[0] else f"decode {x[4]:.0f} x {x[5] / max(x[4], 1):.0f}"
        table.add_row(label, f"{t * 1e3:.2f}", f"{costs.step_of(x) * 1e3:.2f}", f"{e:+.0%}", f"{e0:+.0%}")
    Console().print(table)
    print(f"error with the squared terms: max {result['max_error']:.0%}, mean {result['mean_error']:.0%}; "
          f"without: max {result['max_error_linear']:.0%}, mean {result['mean_error_linear']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
