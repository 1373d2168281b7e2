"""What GP's two readability rules are worth: the same runs with each of them undone.

    python benchmarks/readable_champions.py [--adapter examples/single_queue.py] [--seeds 20]
        [--population 16] [--generations 10] [--workers 2] [--json]
    python benchmarks/readable_champions.py --adapter simulator -o scenario=mixed --seeds 3 --population 12 --generations 6

GP renders each child without dead code (``x if True else y`` is ``x``; operators/gp.py),
and a tie for champion goes to the smaller program (``Strategy.best``). Three arms run the
same seeds: both rules; dead code kept (children rendered as the trees are); ties broken
by program id (the champion is whichever tied program's id sorts first), as until
2026-12-05. For each it prints the programs scored, how many carried dead code, how many
were another program of the run plus dead code (an evaluation spent on nothing new), the
champion's size in syntax nodes, and its objective on training and on held-out snapshots
(means over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis import Archive, Config, Evolution
from autopoiesis.adapters import AdapterError, load_adapter
from autopoiesis.cli import UserError, parse_options, positive_int
from autopoiesis.operators import OperatorError, gp
from autopoiesis.program import program_size, replace_function
from autopoiesis.search import Strategy


@contextmanager
def ties_by_id():
    """The ablation: a tie for champion goes to the program whose id sorts first."""
    best = Strategy.best
    Strategy.best = lambda self, population: min(
        population, key=lambda i: (tuple(-w for w in i.fitness.wvalues), i.program.id))
    try:
        yield
    finally:
        Strategy.best = best


@contextmanager
def dead_code_kept():
    """The ablation: GP renders its trees as they are."""
    visit = gp._Simplify.visit
    gp._Simplify.visit = lambda self, node: node
    try:
        yield
    finally:
        gp._Simplify.visit = visit


def rendered(source: str, slots) -> str:
    """The program with each GP slot's function parsed and rendered again (docstrings and
    constants' last digits go; so, unless ``dead_code_kept``, does dead code)."""
    for slot in slots:
        try:
            source = replace_function(source, slot.name, gp.to_source(slot, gp.from_source(source, slot)))
        except OperatorError:  # not a GP expression (an LLM's program, a baseline with statements)
            pass
    return source


ARMS = {"both rules": nullcontext, "dead code kept": dead_code_kept, "ties by id": ties_by_id}


def one_run(adapter, config: Config, arm: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        archive = Archive(Path(folder) / "archive.db")
        with ARMS[arm]():
            result = Evolution(adapter, config, archive).run()
        sources = [archive.program(b["program"]).source for b in archive.births(result.run_id)
                   if b["status"] in ("valid", "failed")]
    objective = result.fitness.objectives[0]
    slots = [s for s in adapter.slots() if s.primitives is not None]
    with dead_code_kept():
        kept = [rendered(source, slots) for source in sources]
    cleaned = [rendered(source, slots) for source in sources]
    return {"programs": len(sources), "dead_code": sum(a != b for a, b in zip(kept, cleaned)),
            "redundant": len(set(kept)) - len(set(cleaned)), "size": program_size(result.champion.source),
            "train": result.fitness.scalar, "held_out": result.held_out["champion"][objective.name]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=str(Path(__file__).resolve().parent.parent / "examples" / "single_queue.py"))
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=positive_int, default=20)
    parser.add_argument("--population", type=positive_int, default=16)
    parser.add_argument("--generations", type=positive_int, default=10)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        adapter = load_adapter(args.adapter, parse_options(args.option))
    except (AdapterError, UserError) as e:
        parser.error(str(e))

    arms = {}
    for arm in ARMS:
        runs = [one_run(adapter, Config(population=args.population, generations=args.generations, seed=seed,
                                        workers=args.workers), arm) for seed in range(args.seeds)]
        arms[arm] = {
            "programs": sum(r["programs"] for r in runs), "dead_code": sum(r["dead_code"] for r in runs),
            "redundant": sum(r["redundant"] for r in runs), "size": statistics.mean(r["size"] for r in runs),
            "train": statistics.mean(r["train"] for r in runs), "held_out": statistics.mean(r["held_out"] for r in runs),
            "runs": runs,
        }
    if args.json:
        print(json.dumps(arms, indent=2))
        return 0
    table = Table(title=f"{adapter.name}: {args.seeds} seeds, population {args.population}, "
                        f"{args.generations} generations; champion's objective, mean over seeds")
    for column in ("arm", "programs scored", "with dead code", "another plus dead code", "champion size (nodes)",
                   "champion (training)", "champion (held out)"):
        table.add_column(column, justify="right" if column != "arm" else "left")
    for arm, a in arms.items():
        table.add_row(arm, str(a["programs"]), f"{a['dead_code']} ({a['dead_code'] / a['programs']:.0%})",
                      f"{a['redundant']} ({a['redundant'] / a['programs']:.0%})", f"{a['size']:.1f}",
                      f"{a['train']:.4g}", f"{a['held_out']:.4g}")
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
