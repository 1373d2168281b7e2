"""Evaluations per second of the Evaluator's sandboxed pool on the single-queue example.

    python benchmarks/evaluator_throughput.py [--programs 400] [--jobs 300] [--json]

Each evaluation compiles an untrusted program in a worker, validates it and runs the
example's queue simulation on one snapshot. Distinct programs (random GP trees), so
the cache never answers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis import Evaluator, Program, Task
from autopoiesis.operators import gp
from autopoiesis.cli import positive_int

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "single_queue.py"


def load_example():
    spec = importlib.util.spec_from_file_location("single_queue_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def distinct_programs(slot, count: int) -> list[Program]:
    random.seed(0)
    programs: dict[str, Program] = {}
    while len(programs) < count:
        program = Program(gp.random_program(slot))
        programs[program.id] = program
    return list(programs.values())


def measure(adapter, programs, workers: int) -> dict:
    snapshot = adapter.snapshot(0)
    tasks = [Task(p.id, p.source, snapshot) for p in programs]
    with Evaluator(adapter, workers=workers) as evaluator:
        evaluator.evaluate(tasks[:workers])  # start the workers outside the timing
        start = time.perf_counter()
        outcomes = evaluator.evaluate(tasks[workers:])
        seconds = time.perf_counter() - start
    ok = sum(o.ok for o in outcomes.values())
    return {"workers": workers, "evaluations": len(outcomes), "valid": ok, "seconds": round(seconds, 3),
            "evaluations_per_second": round(len(outcomes) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=positive_int, default=400)
    parser.add_argument("--jobs", type=positive_int, default=300, help="jobs per snapshot (work per evaluation)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    example = load_example()
    adapter = example.SingleQueueAdapter(jobs=args.jobs)
    programs = distinct_programs(example.PRIORITY, args.programs)
    rows = [measure(adapter, programs, workers) for workers in (1, 2)]
    if args.json:
        print(json.dumps({"jobs_per_snapshot": args.jobs, "results": rows}))
        return
    table = Table(title=f"Evaluator throughput, single-queue example ({args.jobs} jobs per snapshot)")
    for column in ("workers", "evaluations", "valid", "seconds", "evaluations/s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("workers", "evaluations", "valid", "seconds", "evaluations_per_second")))
    Console().print(table)


if __name__ == "__main__":
    main()
