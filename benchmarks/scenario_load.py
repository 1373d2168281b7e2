"""What each simulator evaluation pays to build its scenario, against the whole evaluation.

    python benchmarks/scenario_load.py [--scenario NAME ...] [--seeds 5] [--json]

Every evaluation on the simulator loads its scenario for its seed (parses the file,
checks it, draws or reads the workload) and then simulates it. This times both, in this
process, for the ``default`` program (every slot's first baseline), over seeds 0, 1, ...
A process parses each trace file once while the file is unchanged
(``autopoiesis.traces.read_trace``); the column "parsing the trace again" times the load
with that cache emptied first, as every evaluation of a trace scenario paid before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from rich.console import Console
from rich.table import Table

from autopoiesis import traces
from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios, simulate
from autopoiesis.cli import positive_int
from autopoiesis.sandbox import compile_policy


def measure(name: str, adapter: SimulatorAdapter, seeds: int) -> dict:
    policy = compile_policy(adapter.baselines()["default"].source, adapter.slots())
    loads, uncached, evaluations = [], [], []
    for seed in range(seeds):
        loads.append(_timed(scenarios.load, name, seed, None))
        traces._parsed.cache_clear()
        uncached.append(_timed(scenarios.load, name, seed, None))
        evaluations.append(_timed(simulate, policy, name, seed))
    load, evaluation = statistics.fmean(loads), statistics.fmean(evaluations)
    return {"scenario": name, "load_ms": 1000 * load, "load_parsing_again_ms": 1000 * statistics.fmean(uncached),
            "evaluation_s": evaluation, "load_share": load / evaluation}


def _timed(work, *args) -> float:
    start = time.perf_counter()
    work(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios")
    parser.add_argument("--seeds", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        adapters = {name: SimulatorAdapter(name) for name in args.scenario or scenarios.names()}
    except AdapterError as e:
        parser.error(str(e))
    rows = [measure(name, adapter, args.seeds) for name, adapter in adapters.items()]
    if args.json:
        print(json.dumps(rows))
        return
    table = Table(title=f"scenario load against the whole evaluation ({args.seeds} seeds, one core)")
    for column in ("scenario", "load (ms)", "parsing the trace again (ms)", "evaluation (s)", "load share"):
        table.add_column(column, justify="left" if column == "scenario" else "right", no_wrap=column == "scenario")
    for row in rows:
        table.add_row(row["scenario"], f"{row['load_ms']:.0f}", f"{row['load_parsing_again_ms']:.0f}",
                      f"{row['evaluation_s']:.2f}", f"{row['load_share']:.1%}")
    Console().print(table)


if __name__ == "__main__":
    main()
