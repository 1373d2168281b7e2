"""``autopoiesis serve`` and ``bench``: the adapter's live system with one fixed policy, a
progress line per window; ``bench`` stops when its load is done and prints the metrics."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autopoiesis.report import number

from .common import UserError, new_console, parse_options
from .parser import live_options
from .policy import archive_with_runs, policy_program


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve with one fixed policy; ``bench`` stops when its load is done and prints the metrics."""
    from autopoiesis.adapters.base import load_adapter, option_names
    from autopoiesis.metrics import SLO, RollingWindow

    options = parse_options(args.option)
    if args.scenario:
        options["scenario"] = args.scenario
    options.update(live_options(args))
    bench = args.command == "bench"
    adapter = load_adapter(args.adapter, options)
    adapter.check_live(("start", "now", "observe", "deploy"))
    if bench and not (options.get("scenario") or options.get("trace")) and \
            {"scenario", "trace"} & set(option_names(type(adapter))):  # else the adapter brings its own load
        raise UserError("bench needs a load: --scenario NAME or --trace FILE")
    run_dir = getattr(adapter, "run_dir", None) or str(Path(args.runs_dir) / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
    if hasattr(adapter, "run_dir"):
        adapter.run_dir = run_dir  # server logs and requests.jsonl
    baselines = adapter.baselines()
    program = next(iter(baselines.values()))
    if args.policy:
        archive = None if Path(args.policy).is_file() else archive_with_runs(args.policy, args.runs_dir)
        try:
            program = policy_program(args.policy, adapter, archive)
        finally:
            if archive is not None:
                archive.close()
    console = new_console(stderr=True)
    console.print(f"starting {adapter.name} ({adapter.describe()})"
                  + (f"; logs in {run_dir}" if hasattr(adapter, "run_dir") else ""))
    adapter.start(getattr(args, "live_seed", 1000))
    window, total = RollingWindow(), RollingWindow()
    try:
        from autopoiesis import sandbox

        try:
            adapter.deploy(program, [next(iter(baselines.values()))])
        except sandbox.Rejected as e:
            raise UserError(f"policy {args.policy} rejected: {e}") from None
        router = getattr(adapter, "router", None)
        if router is not None:
            console.print(f"router: {router.url} (OpenAI-compatible; policy {program.id})")
        if getattr(adapter, "load_description", ""):
            console.print(f"load: {adapter.load_description}", highlight=False)
        while True:
            observation = adapter.observe(adapter.now() + args.window)
            for record in observation.records:
                window.add(record)
                total.add(record)
            m = window.summary(getattr(adapter, "slo", None) or SLO())
            console.print(f"t={observation.now:6.0f}s  finished {m.get('requests', 0):4.0f}  errors "
                          f"{m.get('errors', 0):.0f}  in flight {len(observation.in_flight):3d}  mean TTFT "
                          f"{number(m.get('mean_ttft'))} s  mean e2e {number(m.get('mean_e2e'))} s"
                          + "".join(f"  [{kind}] {detail}" for _, kind, detail in observation.events),
                          highlight=False)
            window = RollingWindow()
            if observation.finished:
                break
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        adapter.stop()
    metrics = total.summary(getattr(adapter, "slo", None) or SLO()) if total.records else {"requests": 0.0}
    if args.json:
        print(json.dumps(metrics))
    else:
        from autopoiesis.online_view import titled_table

        table = titled_table(f"{args.command}: {adapter.name}, policy {program.name or program.id}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, number(value))
        new_console().print(table)
    return 0
