"""The command line's flags: one parser, every subcommand."""

from __future__ import annotations

import argparse
import os
from typing import Any

from autopoiesis import __version__

from .common import UserError, non_negative_float, non_negative_int, positive_float, positive_int


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback-like noise
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopoiesis", description="Serving policies that evolve while the system serves.")
    parser.add_argument("--version", action="version", version=f"autopoiesis {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    ev = sub.add_parser("evolve", help="evolve policies for an adapter")
    ev.add_argument("--adapter", help="registered name, module:Class or path/to/file.py[:Class]")
    ev.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for the adapter (repeatable; VALUE is JSON or a string)")
    ev.add_argument("--scenario", help="scenario for adapters that take one (same as -o scenario=NAME)")
    ev.add_argument("--population", type=positive_int, help="programs per generation (default 16; online 8)")
    ev.add_argument("--generations", type=non_negative_int, help="generations (default 10; online 3 per evolution)")
    ev.add_argument("--seed", type=non_negative_int, default=0, help="seeds the operators and the snapshots (training and held-out)")
    ev.add_argument("--objective", action="append", default=[], metavar="[min:|max:]METRIC",
                    help="metric to optimise (repeat for several, e.g. with --strategy nsga2)")
    ev.add_argument("--strategy", default="generational",
                    choices=["generational", "mu-plus-lambda", "islands", "nsga2"],
                    help="DEAP selection and survival (nsga2: several objectives, a Pareto front)")
    ev.add_argument("--budget", type=positive_int, help="most programs to evaluate")
    ev.add_argument("--workers", type=positive_int, default=max(1, min(4, os.cpu_count() or 1)),
                    help="sandboxed worker processes scoring programs (default: the cores, at most 4)")
    ev.add_argument("--timeout", type=positive_float, default=10.0,
                    help="CPU seconds per evaluation (the worker's own, so a busy machine does not change it)")
    ev.add_argument("--memory-mb", type=positive_int, default=1024, help="memory per worker for untrusted code")
    ev.add_argument("--train-snapshots", type=positive_int, default=3, help="workloads each program is scored on")
    ev.add_argument("--held-out-snapshots", type=non_negative_int, default=5,
                    help="unseen workloads the champion and baselines are compared on at the end")
    ev.add_argument("--runs-dir", default="runs", help="where the archive and run folders live")
    ev.add_argument("--resume", metavar="RUN", help="continue a run that was interrupted")
    ev.add_argument("--json", action="store_true", help="print a machine-readable summary")
    llm = ev.add_argument_group("LLM operators (--llm or --llm-url; docs/llm.md)")
    llm.add_argument("--llm", metavar="SPEC", action="append", default=[],
                    help="openai:MODEL, anthropic:MODEL, or replay:RUN (no network); repeat with @WEIGHT "
                         "for an ensemble, e.g. --llm openai:gpt-4o-mini@0.8 --llm openai:gpt-4o@0.2")
    llm.add_argument("--llm-url", help="any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a gateway)")
    llm.add_argument("--llm-model", help="model name on --llm-url")
    llm.add_argument("--llm-rate", type=float, default=0.5, help="share of children the LLM operators make (0-1)")
    llm.add_argument("--llm-max-calls", type=positive_int, help="stop (resumably) after this many LLM calls")
    llm.add_argument("--llm-max-tokens", type=positive_int, help="stop (resumably) after this many tokens")
    llm.add_argument("--llm-max-usd", type=positive_float, help="stop (resumably) after this much money")
    llm.add_argument("--llm-concurrency", type=positive_int, default=1, help="most LLM calls in flight at once")
    llm.add_argument("--prompts", help="folder of prompt templates that override the shipped ones")
    llm.add_argument("--llm-max-output-tokens", type=positive_int, default=2048, help="longest reply per call")
    add_live_args(ev)
    on = ev.add_argument_group("online evolution (--online): evolve while the live system serves")
    on.add_argument("--online", action="store_true", help="run the live system and evolve, deploy and guard as it serves")
    on.add_argument("--window", type=positive_float, default=30.0, help="seconds in one live window")
    on.add_argument("--history", type=positive_int, default=2, help="windows the twin replays per evolution")
    on.add_argument("--horizon", type=positive_int, default=4,
                    help="windows a candidate is scored over: the history's arrivals repeat to fill them (simulator)")
    on.add_argument("--period", type=non_negative_int, default=4, help="windows between periodic evolutions (0: drift only)")
    on.add_argument("--step", type=non_negative_float, default=5.0,
                    help="seconds between looks at the live system; a cluster event starts an evolution at the next one")
    on.add_argument("--poll", type=positive_float, default=0.05,
                    help="seconds between looks for a finished evolution, on a wall-clock adapter (engine, vLLM)")
    on.add_argument("--cooldown", type=non_negative_int, default=2, help="windows after a trigger before drift may trigger again")
    on.add_argument("--margin", type=non_negative_float, default=0.01, help="relative gain on the twin a champion needs to deploy")
    on.add_argument("--replan-margin", type=non_negative_float, default=0.05,
                    help="relative gain a champion needs when it re-plans more than the incumbent on the twin")
    on.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=True,
                    help="a periodic trigger's champion must not lose on the stretch before its snapshot")
    on.add_argument("--recall", action=argparse.BooleanOptionalAction, default=True,
                    help="seed evolutions with the winners the guard confirmed in earlier online runs of this "
                         "adapter in --runs-dir (the closest conditions first)")
    on.add_argument("--guard-windows", type=positive_int, default=2, help="windows a deployment is watched")
    on.add_argument("--guard-tolerance", type=positive_float, default=0.25, help="relative regression that makes a window suspect")
    on.add_argument("--evolution-cost", type=non_negative_float,
                    help="simulated seconds each evolution takes (default: its measured wall-clock time)")
    on.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="serve each deployed program from a process of its own, so not even one long C call of it "
                         "can hold or grow the serving process (a process round trip per decision; default: on for "
                         "the engine and vllm adapters, off for the simulator)")
    on.add_argument("--live-seed", type=non_negative_int, default=1000, help="seed of the live workload (simulated live systems)")
    on.add_argument("--max-windows", type=positive_int, help="stop after this many windows")
    on.add_argument("--policy", metavar="FILE|RUN|PROGRAM",
                    help="what the live system starts serving: a file of policy functions (slots it leaves out keep "
                         "the first baselines) or a run in --runs-dir: an offline run's champion, an online run's "
                         "last live program; or an archived program's id (default: the first baselines)")

    rp = sub.add_parser("report", help="show a run: champion, progress, lineage, baselines")
    rp.add_argument("run", metavar="RUN", nargs="?", help="run id (default: the latest)")
    rp.add_argument("--runs-dir", default="runs")
    rp.add_argument("--json", action="store_true")
    rp.add_argument("--list", action="store_true", help="list the runs in --runs-dir, newest first")

    sub.add_parser("adapters", help="list registered adapters and their policy slots")

    for name, text in (("serve", "serve through the adapter's router with a fixed policy (Ctrl-C stops)"),
                       ("bench", "replay a load (--scenario or --trace) through the router and print its metrics")):
        sv = sub.add_parser(name, help=text)
        sv.add_argument("--adapter", default="vllm", help="an adapter with a live system (default vllm)")
        sv.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE")
        sv.add_argument("--scenario", help="a named load (vLLM: steady, shift, burst)")
        sv.add_argument("--policy", metavar="FILE|RUN|PROGRAM",
                        help="policy functions to serve with (slots it leaves out keep the first baselines), or a run "
                             "in --runs-dir: an offline run's champion, an online run's last live program; or an "
                             "archived program's id (default: the first baselines)")
        sv.add_argument("--window", type=positive_float, default=10.0, help="seconds per progress line")
        sv.add_argument("--runs-dir", default="runs", help="where the server logs and requests.jsonl go, and the "
                                                               "archive --policy RUN is found in")
        sv.add_argument("--json", action="store_true", help="print the metrics as JSON at the end")
        if name == "bench":
            sv.add_argument("--live-seed", type=non_negative_int, default=1000,
                            help="seed of the load (the same as evolve --online's for the same arrivals)")
        add_live_args(sv)

    sim = sub.add_parser("simulate", help="run one policy on a simulator scenario and print its metrics")
    sim.add_argument("--scenario", default="mixed", help="scenario name or path/to/scenario.toml")
    sim.add_argument("--policy", action="append", default=[], metavar="FILE|RUN|PROGRAM",
                     help="Python file with policy functions, or a run in --runs-dir (its champion, or an online "
                          "run's last live program), or an archived program's id (8 characters do); repeatable; "
                          "slots none defines use the first baseline")
    sim.add_argument("--runs-dir", default="runs", help="where --policy RUN is found")
    sim.add_argument("--seed", type=non_negative_int, default=0)
    sim.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="requests=N serves the scenario's first N requests only, as evolve's -o does")
    sim.add_argument("--json", action="store_true")
    sim.add_argument("--timeout", type=positive_float, default=600.0, help="CPU seconds before the run is stopped")
    sim.add_argument("--list", action="store_true", help="list the scenarios and baselines, then exit")
    return parser


def add_live_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("vLLM (--adapter vllm; docs/vllm.md)")
    g.add_argument("--vllm-url", action="append", default=[], metavar="URL",
                   help="attach to a running OpenAI-compatible vLLM server (repeatable)")
    g.add_argument("--vllm-launch", metavar="MODEL_DIR", help="launch vLLM servers of this model (stopped at the end)")
    g.add_argument("--replicas", type=positive_int, help="servers to launch (default 1)")
    g.add_argument("--vllm-python", metavar="PYTHON", help="the Python that has vLLM (default $AUTOPOIESIS_VLLM_PYTHON)")
    g.add_argument("--vllm-args", metavar="ARGS", help="extra vLLM server arguments, e.g. '--max-num-seqs 8'")
    g.add_argument("--plugin", action="store_true", help="order each server's queue in-engine (scheduler plugin)")
    g.add_argument("--trace", metavar="FILE", help="replay a trace CSV as the load")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=positive_float, help="load: requests/s (default 2; a scenario's base rate)")
    rate.add_argument("--load-factor", type=positive_float, metavar="F",
                      help="load: F times the twin's capacity (vllm: fitted to a probe of the servers at start)")
    g.add_argument("--duration", type=positive_float, help="load: seconds (default 120)")
    g.add_argument("--token-scale", type=positive_float, help="trace: multiply token counts (fit a small model)")
    g.add_argument("--port", type=int, help="the router's port (default: a free one)")


def live_options(args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM flags as adapter options (only those given)."""
    names = {"vllm_url": "urls", "vllm_launch": "launch", "replicas": "replicas", "vllm_python": "python",
             "vllm_args": "vllm_args", "trace": "trace", "rate": "rate", "load_factor": "load_factor",
             "duration": "duration", "token_scale": "token_scale", "port": "port"}
    out = {key: getattr(args, flag) for flag, key in names.items() if getattr(args, flag, None) not in (None, [])}
    if getattr(args, "plugin", False):
        out["plugin"] = True
    return out
