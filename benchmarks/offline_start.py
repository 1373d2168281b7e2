"""What is an offline champion worth as an online run's start? Online from it against online from ``default``.

    python benchmarks/offline_start.py [--scenario NAME ...] [--load F] [--evolution-cost 3] [--workers 2] [--json]

For each dynamic scenario of the simulator, an offline run evolves a champion exactly as
``autopoiesis evolve --adapter simulator --scenario S`` does (population 16, 10 generations,
training seeds 0-2, held-out seeds 500-504): it never sees the live workload. Then the live
seed 1000 (the one paper.py's ``--quick`` serves) is served three ways: the champion alone,
static; online from the champion (``evolve --online --policy RUN``); and online from
``default`` (paper.py's online arm). Every evolution costs a fixed ``--evolution-cost``
simulated seconds, so the two online runs are deterministic and differ only by where they
start. It prints total execution time and mean end-to-end latency of each, and of the best
static baseline on that seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.archive import Archive
from autopoiesis.cli import positive_float, positive_int
from autopoiesis.evolution import Config, Evolution

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import dynamic_scenarios, online_arm, whole_runs  # noqa: E402 - the arms as paper.py scores them

LIVE_SEED = 1000


def online(scenario: str, initial, cost: float, workers: int) -> dict:
    """One online run as paper.py's (population 8, 3 generations), with a fixed evolution cost."""
    controller = online_arm(SimulatorAdapter(scenario), LIVE_SEED, workers, initial=initial, evolution_cost_s=cost)
    summary = controller.run()
    return {"total_time": summary["live"]["total_time"], "mean_e2e": summary["live"]["mean_e2e"],
            "deployments": summary["deployments"], "rollbacks": summary["rollbacks"]}


def gain(reference: float, value: float) -> float:
    return (reference - value) / reference


def run_scenario(scenario: str, cost: float, workers: int) -> dict:
    adapter = SimulatorAdapter(scenario)
    champion = Evolution(adapter, Config(workers=workers), Archive(), adapter_spec="simulator").run().champion
    programs = {**adapter.baselines(), "champion": champion}
    _, scores = whole_runs(adapter, programs, [LIVE_SEED], workers)
    static = {k: v for k, v in scores.items() if k != "champion"}
    best = min(static, key=lambda k: static[k]["total_time"])
    alone = scores.get("champion")  # None: the champion fails a whole run of the live seed
    row = {"scenario": scenario, "best_baseline": best, "best_baseline_total_time": static[best]["total_time"],
           "best_baseline_mean_e2e": static[best]["mean_e2e"], "champion": champion.id,
           "champion_static": {k: alone[k] for k in ("total_time", "mean_e2e")} if alone else None,
           "from_default": online(scenario, None, cost, workers),
           "from_champion": online(scenario, champion, cost, workers)}
    for arm in ("from_default", "from_champion"):
        row[f"{arm}_vs_best_baseline"] = gain(row["best_baseline_total_time"], row[arm]["total_time"])
    return row


def table(rows: list[dict]) -> Table:
    t = Table(title=f"online from an offline champion vs from default (live seed {LIVE_SEED}; total s / mean e2e s)")
    for column in ("scenario", "best static", "champion alone", "online from default", "online from champion",
                   "deploys (default / champion)"):
        t.add_column(column)
    for r in rows:
        alone = r["champion_static"]
        t.add_row(r["scenario"], f"{r['best_baseline_total_time']:.1f} / {r['best_baseline_mean_e2e']:.2f} "
                                 f"({r['best_baseline']})",
                  f"{alone['total_time']:.1f} / {alone['mean_e2e']:.2f}" if alone else "fails",
                  *(f"{r[a]['total_time']:.1f} / {r[a]['mean_e2e']:.2f} ({r[f'{a}_vs_best_baseline']:+.1%})"
                    for a in ("from_default", "from_champion")),
                  f"{r['from_default']['deployments']} / {r['from_champion']['deployments']}")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: every dynamic one)")
    parser.add_argument("--load", type=positive_float, default=1.0, help="arrival rates times F (scenario NAME@F)")
    parser.add_argument("--evolution-cost", type=positive_float, default=3.0, help="simulated seconds per evolution")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = dynamic_scenarios(parser, args.scenario)
    if args.load != 1.0:
        names = [f"{n}@{args.load:g}" for n in names]
    console = Console(stderr=True)
    rows = []
    try:
        for name in names:
            with console.status(f"{name}: offline evolution, then seed {LIVE_SEED} online from its champion "
                                f"and from default"):
                rows.append(run_scenario(name, args.evolution_cost, args.workers))
            r = rows[-1]
            console.print(f"{name}: online from default {r['from_default_vs_best_baseline']:+.1%}, from the "
                          f"champion {r['from_champion_vs_best_baseline']:+.1%} against {r['best_baseline']}",
                          highlight=False)
    except AdapterError as e:
        parser.exit(2, f"error: {e}\n")
    summary = {f"mean_{arm}_vs_best_baseline": statistics.fmean(r[f"{arm}_vs_best_baseline"] for r in rows)
               for arm in ("from_default", "from_champion")}
    if args.json:
        print(json.dumps({"rows": rows, "load": args.load, **summary}, indent=1))
    else:
        Console().print(table(rows))
        print(f"mean over {len(rows)} scenario(s), total time against the best static baseline: online from "
              f"default {summary['mean_from_default_vs_best_baseline']:+.2%}, from the offline champion "
              f"{summary['mean_from_champion_vs_best_baseline']:+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
