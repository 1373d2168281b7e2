"""``autopoiesis simulate``: one policy on one simulator scenario, run in a sandboxed worker."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.text import Text

from autopoiesis.report import number

from .common import UserError, new_console, parse_options
from .policy import archive_with_runs, defined_slots, read_policy, run_program


def cmd_simulate(args: argparse.Namespace) -> int:
    from autopoiesis.online_view import titled_table

    from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
    from autopoiesis.adapters.simulator.slots import SLOTS
    from autopoiesis.evaluate import Evaluator, Limits, Task
    from autopoiesis.sandbox import Rejected, check

    console = new_console()
    if args.list:
        table = titled_table("scenarios")
        table.add_column("name")
        table.add_column("description")
        for name in scenarios.names():
            table.add_row(name, scenarios.describe(name))
        console.print(table)
        for slot in SLOTS:
            console.print(Text.assemble((slot.name, "bold"), f" baselines: {', '.join(slot.baselines)}"))
        return 0
    try:
        scenarios.path_of(args.scenario)
    except scenarios.ScenarioError as e:
        raise UserError(str(e)) from None
    options = parse_options(args.option)
    if set(options) - {"requests"}:
        other = ", ".join(f"-o {k}" for k in sorted(set(options) - {"requests"}))
        raise UserError(f"simulate takes only -o requests=N (the scenario is --scenario, the seed --seed); got {other}")
    run_ids = [spec for spec in args.policy if not Path(spec).is_file()]
    archive = archive_with_runs(run_ids[0], args.runs_dir) if run_ids else None
    try:
        sources = [read_policy(spec, SLOTS) if Path(spec).is_file() else run_program(spec, archive).source
                   for spec in args.policy]
    finally:
        if archive is not None:
            archive.close()
    source = "\n\n".join(sources)
    defined = defined_slots(source, SLOTS) or set()
    for slot in SLOTS:  # fill the slots the files leave out with their first baseline
        if slot.name not in defined:
            source += "\n\n" + next(iter(slot.baselines.values()))
    try:
        check(source, SLOTS)
        adapter = SimulatorAdapter(args.scenario, **options)  # a bad requests=N is an AdapterError: one line
        scenarios.load(args.scenario, args.seed, 1)  # a missing trace or bad field: say so before starting
    except Rejected as e:
        raise UserError(f"policy rejected: {e}") from None
    except scenarios.ScenarioError as e:
        raise UserError(str(e)) from None
    # the policy is untrusted code: it runs in a sandboxed worker with a deadline, not in this process
    with Evaluator(adapter, workers=1, limits=Limits(timeout=args.timeout, memory_mb=2048)) as evaluator:
        (outcome,) = evaluator.evaluate([Task("policy", source, adapter.snapshot(args.seed))]).values()
    if not outcome.ok:
        raise UserError(f"policy failed: {outcome.error}")
    metrics = outcome.metrics
    if args.json:
        print(json.dumps(metrics))
        return 0
    first = f", first {adapter.requests} requests" if adapter.requests else ""
    table = titled_table(f"{args.scenario} (seed {args.seed}{first}): {', '.join(args.policy) or 'first baselines'}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, number(metrics[key]))
    console.print(table)
    return 0
