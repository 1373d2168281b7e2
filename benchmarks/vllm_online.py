"""Real vLLM servers served live: static policies against Autopoiesis online, on the same load.

    python benchmarks/vllm_online.py MODEL_DIR [--replicas 2] [--vllm-args "..."] [--plugin]
        [--scenario shift] [--load-factor 1.0 | --rate R] [--duration 120] [--seeds 1] [--repeats 1]
        [--arms default,least_outstanding,least_kv,shortest_prompt,online] [--online-args "..."]
        [--runs-dir DIR] [--json]

Each arm is one `autopoiesis` command, as a user would run it, on servers launched afresh
(no arm finds another's prompts in vLLM's prefix cache): each static arm is `autopoiesis
bench --policy` with one dispatch and one priority baseline; `online` is `autopoiesis
evolve --online --window 10 --period 1` and then `--online-args` (a flag given again wins),
starting from the default (round robin, first come; offline operators; `--online-args
"--policy FILE"` starts it from FILE);
`online_never_deploying` (not run unless named in --arms) is the same with a margin no
champion meets, so it serves the default while evolving: what the evolution plane alone
costs the servers, which share the machine's cores with it.
Every arm of a seed is sent the same arrivals: the same scenario, rate, duration and
`--live-seed`; on a busy machine the router receives them late (the load generator shares
its event loop), by different amounts in different arms, and a late arrival lengthens total
time whatever the policy, so each arm reports how late its arrivals were. `--load-factor F` sizes the rate once, before the arms: a `bench
--load-factor F` on fresh servers is stopped (SIGTERM) once its probe has set the rate,
which every arm then gets as `--rate`. Improvement is (arm - online) / arm, on total time
(first arrival to last completion) and on mean end-to-end latency, each arm against the
online run of its own round. `--repeats R` serves every seed's arms R times, in rounds
(every arm once, then again), and the table gives each figure's range beside its mean: on a
shared VM one arm served the same arrivals with mean e2e 0.99 s and 2.96 s twenty minutes
apart, so one run per arm tells little. Takes about (arms x seeds x repeats + 1) x
(duration + a minute). Needs vLLM (`--vllm-python` or
$AUTOPOIESIS_VLLM_PYTHON; docs/vllm.md, "CPU-only machine").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters.vllm import load as loads
from autopoiesis.adapters.vllm.slots import DISPATCH_BASELINES, PRIORITY_BASELINES
from autopoiesis.cli import positive_float, positive_int

STATIC = {  # arm: (dispatch, priority) baselines
    "default": ("round_robin", "fcfs"),
    "least_outstanding": ("least_outstanding", "fcfs"),
    "least_kv": ("least_kv", "fcfs"),
    "shortest_prompt": ("least_outstanding", "shortest_prompt"),
}
ONLINE = "online"
PLANE_ONLY = "online_never_deploying"  # default served while evolving: what the evolution plane alone costs
ARMS = (*STATIC, ONLINE, PLANE_ONLY)
ONLINE_FLAGS = ("--window", "10", "--period", "1")  # every online arm's; --online-args come after, and win
HEADLINE = ("total_time", "mean_e2e", "p99_ttft", "slo_attainment")
CLI = [sys.executable, "-m", "autopoiesis.cli"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="MODEL_DIR", help="the model the servers load (tests/vllm_tiny_model.py makes one)")
    parser.add_argument("--replicas", type=positive_int, default=2)
    parser.add_argument("--vllm-args", default="--max-num-seqs 2 --max-model-len 2048 --dtype bfloat16")
    parser.add_argument("--vllm-python", help="the Python that has vLLM (default $AUTOPOIESIS_VLLM_PYTHON)")
    parser.add_argument("--plugin", action="store_true", help="order each server's queue in-engine, in every arm")
    parser.add_argument("--scenario", default="shift")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=positive_float, help="requests/s for every arm (a scenario's base rate)")
    rate.add_argument("--load-factor", type=positive_float, default=1.0,
                      help="size the rate once to F times the twin's capacity (default 1.0)")
    parser.add_argument("--duration", type=positive_float, default=120.0, help="seconds of load")
    parser.add_argument("--seeds", type=positive_int, default=1, help="loads (live seeds 1000, 1001, ...)")
    parser.add_argument("--repeats", type=positive_int, default=1, help="rounds of every arm on each seed's load")
    parser.add_argument("--arms", default=",".join((*STATIC, ONLINE)), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--online-args", default="",
                        help=f"more `evolve --online` flags for the online arms, after {' '.join(ONLINE_FLAGS)} "
                             "(a flag given again wins; e.g. \"--policy FILE --window 30\")")
    parser.add_argument("--runs-dir", help="where each arm's run folder goes (default: a new temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.scenario not in loads.LOADS:
        parser.error(f"unknown scenario {args.scenario!r}; one of {', '.join(loads.LOADS)}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown or not args.arms:
        parser.error(f"unknown arm {', '.join(map(repr, unknown)) or '(none given)'}; of {', '.join(ARMS)}")
    if not Path(args.model, "config.json").is_file():
        parser.error(f"no model at {args.model} (a directory with config.json; tests/vllm_tiny_model.py makes one)")
    return args


def servers(args) -> list[str]:
    flags = ["--adapter", "vllm", "--vllm-launch", args.model, "--replicas", str(args.replicas),
             "--vllm-args", args.vllm_args, "--scenario", args.scenario, "--duration", str(args.duration)]
    if args.vllm_python:
        flags += ["--vllm-python", args.vllm_python]
    return flags + (["--plugin"] if args.plugin else [])


def size_rate(args, runs: Path, console: Console) -> float:
    """The rate a `bench --load-factor` probe sets; the bench is stopped once it has."""
    out = runs / "sizing"
    command = CLI + ["bench", *servers(args), "--load-factor", str(args.load_factor), "--runs-dir", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("load:"):
            process.send_signal(signal.SIGTERM)
            break
    process.stderr.close()
    process.wait(timeout=120)
    calibration = list(out.glob("*/calibration.json"))
    if not calibration:
        raise SystemExit(f"vllm_online: the sizing probe set no rate:\n{''.join(lines[-20:])}")
    sized = json.loads(calibration[0].read_text())
    console.print(f"sized: the twin's capacity {sized['capacity_rps']:.3g} req/s (a {sized['probe_s']:.0f} s probe), "
                  f"so {args.scenario} at a base rate of {sized['rate']:.4g} req/s", highlight=False)
    return sized["rate"]


def policy_file(arm: str, folder: Path) -> Path:
    dispatch, priority = STATIC[arm]
    path = folder / f"{arm}.py"
    path.write_text(DISPATCH_BASELINES[dispatch] + "\n\n" + PRIORITY_BASELINES[priority] + "\n")
    return path


def arrival_lag(args, rate: float, seed: int, folder: Path) -> dict[str, float]:
    """How far the router's arrivals fell behind the load's schedule (seconds, the last and the
    mean): the load generator and the router share one event loop, which a busy machine can
    hold up, and a late arrival lengthens total time whatever the policy."""
    logs = list(folder.glob("*/requests.jsonl"))
    if not logs:
        return {}
    arrivals = sorted(json.loads(line)["arrival"] for line in logs[0].read_text().splitlines() if line.strip())
    schedule = sorted(at for at, _, _ in loads.named(args.scenario, rate, args.duration, seed).requests)
    lags = [a - arrivals[0] - (at - schedule[0]) for a, at in zip(arrivals, schedule)]
    return {"arrival_lag_last_s": lags[-1], "arrival_lag_mean_s": statistics.mean(lags)} if lags else {}


def arm_command(args, arm: str, rate: float, seed: int, folder: Path) -> list[str]:
    """The `autopoiesis` command of one arm's run into ``folder``."""
    common = [*servers(args), "--rate", repr(rate), "--live-seed", str(seed), "--runs-dir", str(folder), "--json"]
    if arm in (ONLINE, PLANE_ONLY):
        never = ["--margin", "1000"] if arm == PLANE_ONLY else []  # no champion is 1000x better
        return CLI + ["evolve", *common, "--online", *ONLINE_FLAGS, *shlex.split(args.online_args), *never]
    folder.mkdir(parents=True, exist_ok=True)
    return CLI + ["bench", *common, "--policy", str(policy_file(arm, folder))]


def run_arm(args, arm: str, rate: float, seed: int, runs: Path, repeat: int = 0) -> dict:
    """One arm's command and the metrics its --json prints (online: its live metrics, deployments, rollbacks)."""
    folder = runs / (f"seed{seed}-{arm}" + (f"-{repeat + 1}" if args.repeats > 1 else ""))
    command = arm_command(args, arm, rate, seed, folder)
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm_online: arm {arm} (seed {seed}) failed ({done.returncode}):\n"
                         f"{shlex.join(command)}\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    online = arm in (ONLINE, PLANE_ONLY)
    metrics = out["metrics"] if online else out  # both over the records the router kept
    row = {k: metrics.get(k) for k in (*HEADLINE, "requests")}
    row.update(arrival_lag(args, rate, seed, folder))
    if online:
        row.update(deployments=out["deployments"], rollbacks=out["rollbacks"], evolutions=out["evolutions"],
                   fallbacks=out["fallbacks"])
    return {**row, "wall_s": time.monotonic() - start, "run_dir": str(folder)}


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vllm-online-"))
    runs.mkdir(parents=True, exist_ok=True)
    if args.vllm_python:
        os.environ["AUTOPOIESIS_VLLM_PYTHON"] = args.vllm_python
    began = time.monotonic()
    rate = args.rate or size_rate(args, runs, console)
    rounds: list[dict] = []  # one per seed and repeat: {"seed", "repeat", "arms": {arm: row}}
    for repeat in range(args.repeats):
        for seed in range(1000, 1000 + args.seeds):
            arms = {}
            rounds.append({"seed": seed, "repeat": repeat + 1, "arms": arms})
            for arm in args.arms:
                console.print(f"seed {seed}{f', round {repeat + 1}' if args.repeats > 1 else ''}, arm {arm} ...",
                              highlight=False)
                row = arms[arm] = run_arm(args, arm, rate, seed, runs, repeat)
                console.print("  " + "  ".join(f"{k} {row[k]:.4g}" for k in HEADLINE if row.get(k) is not None)
                              + (f"  deployments {row['deployments']}, rollbacks {row['rollbacks']}"
                                 if "deployments" in row else "")
                              + (f"  arrivals {row['arrival_lag_last_s']:.1f} s late at the end"
                                 if "arrival_lag_last_s" in row else "")
                              + f"  ({row['wall_s']:.0f} s)", highlight=False)
    summary = {"scenario": args.scenario, "rate": rate, "duration": args.duration, "replicas": args.replicas,
               "vllm_args": args.vllm_args, "plugin": args.plugin, "rounds": rounds,
               "minutes": (time.monotonic() - began) / 60}
    if ONLINE in args.arms:  # each arm against the online run of its own round: the nearest in time
        summary["improvement"] = {arm: {k: statistics.mean(
            (r["arms"][arm][k] - r["arms"][ONLINE][k]) / r["arms"][arm][k] for r in rounds)
            for k in ("total_time", "mean_e2e")} for arm in args.arms if arm not in (ONLINE, PLANE_ONLY)}
    if args.json:
        print(json.dumps(summary))
        return 0
    runs_each = len(rounds)
    table = Table(title=f"vLLM live, {args.scenario} at {rate:.3g} req/s for {args.duration:g} s, "
                        f"{args.replicas} servers, mean of {args.seeds} seed(s)"
                        + (f" x {args.repeats} rounds" if args.repeats > 1 else "")
                        + (" (min-max beside)" if runs_each > 1 else ""))
    for column in ("arm", *HEADLINE, "arrivals late (s)", "online gains (total, mean e2e)"):
        table.add_column(column, justify="left" if column == "arm" else "right")

    def cell(values: list[float]) -> str:
        mean = f"{statistics.mean(values):.4g}"
        return mean if runs_each == 1 else f"{mean} ({min(values):.4g}-{max(values):.4g})"

    for arm in args.arms:
        gains = summary.get("improvement", {}).get(arm)
        values = {k: [r["arms"][arm].get(k, float("nan")) for r in rounds] for k in (*HEADLINE, "arrival_lag_last_s")}
        lags = [v for v in values["arrival_lag_last_s"] if not math.isnan(v)]  # of the rounds that measured one
        table.add_row(arm, *(cell(values[k]) for k in HEADLINE), f"{max(lags, default=math.nan):.1f}",
                      f"{gains['total_time']:+.1%}, {gains['mean_e2e']:+.1%}" if gains else "")
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)  # a pipe or file: whole columns
    console.print(f"runs in {runs}; {summary['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
