"""The ``autopoiesis`` command: evolve, report, adapters.

A user's mistake (a bad flag, an unknown adapter, a corrupt archive) ends in one
line on stderr and a non-zero exit, never a traceback. Set AUTOPOIESIS_DEBUG=1 to
see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .archive import Archive, ArchiveError
from .program import Program, function_source
from .report import number, print_nothing_valid, print_results, report_data

ARCHIVE_NAME = "archive.db"


class UserError(Exception):
    """Something the user can fix; printed as one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt: a `kill` of autopoiesis,
    a service manager's stop or a closed terminal ends a run as Ctrl-C does, its run marked
    interrupted, its servers stopped and its workers ended, instead of leaving a run that says
    "running" for ever."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: Any) -> None:
    for sig in STOP_SIGNALS:  # a second one ends autopoiesis at once (its servers and workers still end)
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


@contextmanager
def _stop_signals_interrupt():
    """While the CLI runs, SIGTERM and SIGHUP raise Terminated; a handler the host set (nohup's
    ignore, an embedding program's own) stays, and main() called from a thread changes nothing."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        installed = {sig: signal.signal(sig, _raise_terminated) for sig in STOP_SIGNALS
                     if signal.getsignal(sig) == signal.SIG_DFL}
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def interrupted_status(e: KeyboardInterrupt) -> int:
    """The shell's exit status for a run ended by a signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


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
    ev.add_argument("--generations", type=_non_negative_int, help="generations (default 10; online 3 per evolution)")
    ev.add_argument("--seed", type=_non_negative_int, default=0, help="seeds the operators and the snapshots (training and held-out)")
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
    ev.add_argument("--held-out-snapshots", type=_non_negative_int, default=5,
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
    _add_live_args(ev)
    on = ev.add_argument_group("online evolution (--online): evolve while the live system serves")
    on.add_argument("--online", action="store_true", help="run the live system and evolve, deploy and guard as it serves")
    on.add_argument("--window", type=positive_float, default=30.0, help="seconds in one live window")
    on.add_argument("--history", type=positive_int, default=2, help="windows the twin replays per evolution")
    on.add_argument("--horizon", type=positive_int, default=4,
                    help="windows a candidate is scored over: the history's arrivals repeat to fill them (simulator)")
    on.add_argument("--period", type=_non_negative_int, default=4, help="windows between periodic evolutions (0: drift only)")
    on.add_argument("--step", type=_non_negative_float, default=5.0,
                    help="seconds between looks at the live system; a cluster event starts an evolution at the next one")
    on.add_argument("--poll", type=positive_float, default=0.05,
                    help="seconds between looks for a finished evolution, on a wall-clock adapter (engine, vLLM)")
    on.add_argument("--cooldown", type=_non_negative_int, default=2, help="windows after a trigger before drift may trigger again")
    on.add_argument("--margin", type=_non_negative_float, default=0.01, help="relative gain on the twin a champion needs to deploy")
    on.add_argument("--replan-margin", type=_non_negative_float, default=0.05,
                    help="relative gain a champion needs when it re-plans more than the incumbent on the twin")
    on.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=True,
                    help="a periodic trigger's champion must not lose on the stretch before its snapshot")
    on.add_argument("--recall", action=argparse.BooleanOptionalAction, default=True,
                    help="seed evolutions with the winners the guard confirmed in earlier online runs of this "
                         "adapter in --runs-dir (the closest conditions first)")
    on.add_argument("--guard-windows", type=positive_int, default=2, help="windows a deployment is watched")
    on.add_argument("--guard-tolerance", type=positive_float, default=0.25, help="relative regression that makes a window suspect")
    on.add_argument("--evolution-cost", type=_non_negative_float,
                    help="simulated seconds each evolution takes (default: its measured wall-clock time)")
    on.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="serve each deployed program from a process of its own, so not even one long C call of it "
                         "can hold or grow the serving process (a process round trip per decision; default: on for "
                         "the engine and vllm adapters, off for the simulator)")
    on.add_argument("--live-seed", type=_non_negative_int, default=1000, help="seed of the live workload (simulated live systems)")
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
            sv.add_argument("--live-seed", type=_non_negative_int, default=1000,
                            help="seed of the load (the same as evolve --online's for the same arrivals)")
        _add_live_args(sv)

    sim = sub.add_parser("simulate", help="run one policy on a simulator scenario and print its metrics")
    sim.add_argument("--scenario", default="mixed", help="scenario name or path/to/scenario.toml")
    sim.add_argument("--policy", action="append", default=[], metavar="FILE|RUN|PROGRAM",
                     help="Python file with policy functions, or a run in --runs-dir (its champion, or an online "
                          "run's last live program), or an archived program's id (8 characters do); repeatable; "
                          "slots none defines use the first baseline")
    sim.add_argument("--runs-dir", default="runs", help="where --policy RUN is found")
    sim.add_argument("--seed", type=_non_negative_int, default=0)
    sim.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="requests=N serves the scenario's first N requests only, as evolve's -o does")
    sim.add_argument("--json", action="store_true")
    sim.add_argument("--timeout", type=positive_float, default=600.0, help="CPU seconds before the run is stopped")
    sim.add_argument("--list", action="store_true", help="list the scenarios and baselines, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    err = Console(stderr=True)
    try:
        with _stop_signals_interrupt():
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
        return cmd_evolve(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "adapters":
        return cmd_adapters()
    if args.command in ("serve", "bench"):
        return cmd_serve(args)
    if args.command == "simulate":
        return cmd_simulate(args)
    build_parser().print_help()
    return 2


# -- evolve -----------------------------------------------------------------------------
def cmd_evolve(args: argparse.Namespace) -> int:
    from autopoiesis.adapters.base import canonical_spec, load_adapter
    from autopoiesis.evolution import Config, Evolution

    llm_settings = _llm_settings(args)
    replaying = any(s.startswith("replay:") for s in (llm_settings or {}).get("spec") or [])
    # a new run creates the archive only once its adapter loads: a typo leaves no empty runs/ behind
    archive = _open_archive(args.runs_dir, create=False) if args.resume or replaying else None
    replay_source, llm_settings = _replay_setup(args, archive, llm_settings)
    if args.resume:
        run = archive.run(args.resume)
        if run["status"] == "done":
            raise UserError(f"run {args.resume} already finished; see: autopoiesis report {args.resume}")
        _check_resumable(args.resume, run, args.runs_dir)
        spec, stored = run["adapter"], run["config"]
        options = stored.get("adapter_options", {})
        config = _resumed_config(args, Config.from_dict(stored), spec, options, stored.get("objective_list", []))
        llm_settings = stored.get("llm")
        if llm_settings:  # a resumed run may be given a larger budget
            for key in ("max_calls", "max_tokens", "max_usd"):
                value = getattr(args, f"llm_{key}")
                if value is not None:
                    llm_settings = dict(llm_settings, **{key: value})
    else:
        if not args.adapter:
            raise UserError("evolve needs --adapter NAME (or --resume RUN); `autopoiesis adapters` lists them")
        spec = canonical_spec(args.adapter)
        options = parse_options(args.option)
        if args.scenario:
            options["scenario"] = args.scenario
        options.update(_live_options(args))
        online_defaults = (8, 3) if args.online else (16, 10)
        config = Config(
            population=args.population or online_defaults[0],
            generations=online_defaults[1] if args.generations is None else args.generations, seed=args.seed,
            objectives=tuple(args.objective), strategy=args.strategy, budget=args.budget,
            train_snapshots=args.train_snapshots, held_out_snapshots=args.held_out_snapshots,
            workers=args.workers, timeout=args.timeout, memory_mb=args.memory_mb,
        )
    adapter = load_adapter(spec, options)
    _check_objectives(adapter, config.objectives)
    if getattr(adapter, "online_only", False) and not args.online and not args.resume:
        Console(stderr=True).print(f"adapter {adapter.name} evolves on its live system: running with --online")
        args.online = True
        config = Config.from_dict({**config.to_dict(), "population": args.population or 8,
                                   "generations": 3 if args.generations is None else args.generations})
    initial = None
    if args.policy:
        if not args.online:
            raise UserError("--policy sets what an online run starts serving; add --online "
                            "(offline evolution starts from the baselines)")
        if not Path(args.policy).is_file() and archive is None:  # a run id: found in the archive there is
            archive = _archive_with_runs(args.policy, args.runs_dir)
        initial = _policy_program(args.policy, adapter, archive)
    archive = archive or _open_archive(args.runs_dir, create=True)
    if args.online:
        if args.resume:
            raise UserError("an online run serves a live system and cannot be resumed; start a new one "
                            "(its windows and deployments so far are in the archive: autopoiesis report RUN)")
        return _cmd_online(args, adapter, spec, options, config, archive, llm_settings, replay_source, initial)

    console = _console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    )
    state: dict[str, Any] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            state["run"] = data["run"]
            state["task"] = progress.add_task(
                f"evolving {data['run']}", total=data["generations"] + 1, completed=data["from"], info=""
            )
        elif kind == "evaluated":
            state["evals"] = state.get("evals", 0) + 1
        elif kind == "warning":
            console.print(f"warning: {data['message']}", highlight=False, markup=False)
        elif kind == "generation":
            best = data.get("best")
            info = f"best {best:.6g}  evaluations {state.get('evals', 0)}" if best is not None else ""
            progress.update(state["task"], completed=data["generation"] + 1, info=info)
            if not console.is_terminal and not args.json:
                console.print(f"generation {data['generation']}: {info}", highlight=False)

    from autopoiesis.evolution import new_run_id

    run_id = args.resume or new_run_id(adapter.name)
    operators = _operators(llm_settings, archive, run_id, replay_source, [s.name for s in adapter.slots()])
    evolution = Evolution(adapter, config, archive, operators=operators, adapter_spec=spec, adapter_options=options,
                          extra_config={"llm": llm_settings} if llm_settings else None, on_event=on_event)
    try:
        with progress:
            result = evolution.run(resume=args.resume, run_id=run_id)
    except KeyboardInterrupt as e:
        run_id = state.get("run")
        if run_id:
            archive.set_status(run_id, "interrupted")
            console.print(f"interrupted; resume with: autopoiesis evolve --resume {run_id} --runs-dir {args.runs_dir}")
        return interrupted_status(e)

    if args.json:
        print(json.dumps(result.summary()))
    else:
        out = _console()
        print_results(out, archive, result.run_id, training=False)
        out.print(f"\nrun [bold]{result.run_id}[/]: {result.programs} programs scored "
                        f"({result.evaluated} evaluations run, {result.reused} reused). "
                        f"Details: autopoiesis report {result.run_id} --runs-dir {args.runs_dir}")
        _print_llm_line(out, archive, result.run_id)
    return 0


def _print_llm_line(console: Console, archive: Archive, run_id: str) -> None:
    """What the run's LLM calls came to, in a line; above all when they failed, which the
    evolution otherwise survives in silence (the offline operators make the children)."""
    from autopoiesis.archive import llm_calls

    calls = llm_calls(archive, run_id)
    if not calls:
        return
    failed = [c for c in calls if c["response"] is None]
    tokens = sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
    line = f"LLM: {len(calls)} call(s), {tokens:,} tokens, ${sum(c['usd'] for c in calls):.2f}"
    if failed:
        last = (failed[-1]["error"] or "no reason recorded").split("; ")[-1]
        line += f"; {len(failed)} failed, the last: {last}"
        if len(failed) == len(calls):
            line += " (every call: check --llm, --llm-url and the API key)"
    console.print(line, style="yellow" if failed else None, highlight=False)


def _cmd_online(args, adapter, spec, options, config, archive, llm_settings, replay_source, initial=None) -> int:
    from rich.live import Live

    from autopoiesis.evolution import new_run_id
    from autopoiesis.online import Controller, LiveSystemFailed, OnlineConfig
    from autopoiesis.online_view import LiveView, plot, print_report

    online = OnlineConfig(window_s=args.window, history=args.history, horizon=args.horizon, period=args.period,
                          cooldown=args.cooldown, margin=args.margin, replan_margin=args.replan_margin, holdout=args.holdout,
                          guard_windows=args.guard_windows, step_s=args.step, poll_s=args.poll, recall=args.recall,
                          guard_tolerance=args.guard_tolerance, evolution_cost_s=args.evolution_cost,
                          live_seed=args.live_seed, max_windows=args.max_windows, isolate=args.isolate)
    run_id = new_run_id(f"{adapter.name}-online")
    if hasattr(adapter, "run_dir") and not getattr(adapter, "run_dir", None):
        adapter.run_dir = str(Path(args.runs_dir) / run_id)  # server logs and requests.jsonl
    operators = _operators(llm_settings, archive, run_id, replay_source, [s.name for s in adapter.slots()])
    sessions = [op.session for op, _ in operators or [] if hasattr(op, "session")]

    def replayed_latency() -> float:  # replayed LLM answers come at once; their recorded latency still counts
        return sessions[0].ledger.latency_s if sessions and sessions[0].replaying else 0.0

    console = _console(stderr=True)
    view = LiveView(console, run_id)
    controller = Controller(adapter, online, config, archive, operators, run_id=run_id, adapter_spec=spec,
                            adapter_options=options, initial=initial, extra_latency=replayed_latency,
                            on_event=view.on_event,
                            extra_config={"llm": llm_settings} if llm_settings else None)
    try:
        if console.is_terminal and not args.json:
            with Live(view, console=console, refresh_per_second=4):
                summary = controller.run()
        else:
            summary = controller.run()
    except KeyboardInterrupt as e:
        console.print(f"interrupted; what was served so far is in the archive: autopoiesis report {run_id} "
                      f"--runs-dir {args.runs_dir}")
        return interrupted_status(e)
    except LiveSystemFailed as e:
        served = len(archive.windows(run_id))
        if not served:
            raise
        raise UserError(f"{e}; the {served} window(s) served before it are in the archive: autopoiesis report "
                        f"{run_id} --runs-dir {args.runs_dir}") from e  # AUTOPOIESIS_DEBUG=1: the adapter's traceback
    if getattr(adapter, "load_description", ""):
        summary = {**summary, "load": adapter.load_description}
        if not args.json:
            console.print(f"load: {adapter.load_description}", highlight=False)
    figure = None
    try:
        figure = plot(archive.windows(run_id), archive.deployments(run_id), Path(args.runs_dir) / run_id / "online.png",
                      f"{run_id} ({adapter.name})")
    except ImportError:
        console.print("no plot: matplotlib is not installed (pip install 'autopoiesis[plot]')")
    if args.json:
        print(json.dumps({**summary, "plot": str(figure) if figure else None}))
    else:
        out = _console()
        print_report(out, archive, run_id, figure)
        _print_llm_line(out, archive, run_id)
    return 0


def _add_live_args(parser: argparse.ArgumentParser) -> None:
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


def _live_options(args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM flags as adapter options (only those given)."""
    names = {"vllm_url": "urls", "vllm_launch": "launch", "replicas": "replicas", "vllm_python": "python",
             "vllm_args": "vllm_args", "trace": "trace", "rate": "rate", "load_factor": "load_factor",
             "duration": "duration", "token_scale": "token_scale", "port": "port"}
    out = {key: getattr(args, flag) for flag, key in names.items() if getattr(args, flag, None) not in (None, [])}
    if getattr(args, "plugin", False):
        out["plugin"] = True
    return out


# -- serve / bench ----------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Serve with one fixed policy; ``bench`` stops when its load is done and prints the metrics."""
    from autopoiesis.adapters.base import load_adapter, option_names
    from autopoiesis.metrics import SLO, RollingWindow

    options = parse_options(args.option)
    if args.scenario:
        options["scenario"] = args.scenario
    options.update(_live_options(args))
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
        archive = None if Path(args.policy).is_file() else _archive_with_runs(args.policy, args.runs_dir)
        try:
            program = _policy_program(args.policy, adapter, archive)
        finally:
            if archive is not None:
                archive.close()
    console = _console(stderr=True)
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
        _console().print(table)
    return 0


def _replay_setup(args: argparse.Namespace, archive: Archive | None, settings: dict[str, Any] | None):
    """``--llm replay:RUN`` repeats RUN's whole configuration (so the same questions get asked)."""
    replays = [s for s in (settings or {}).get("spec") or [] if s.startswith("replay:")]
    if not replays:
        return None, settings
    if len(settings["spec"]) > 1 or settings.get("url"):
        raise UserError("--llm replay:RUN cannot be combined with other LLMs")
    source_run = replays[0].split(":", 1)[1]
    source = archive.run(source_run)
    args.adapter = source["adapter"]
    args.option = [f"{k}={json.dumps(v)}" for k, v in source["config"].get("adapter_options", {}).items()]
    args.scenario = None
    for key in ("population", "generations", "seed", "strategy", "budget", "train_snapshots",
                "held_out_snapshots", "timeout", "memory_mb"):
        setattr(args, key, source["config"][key])
    args.objective = list(source["config"].get("objectives", []))
    return source_run, dict(source["config"].get("llm") or {}, spec=settings["spec"])


def _llm_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    if not (args.llm or args.llm_url):
        if args.llm_model:
            raise UserError("--llm-model goes with --llm-url")
        return None
    if not 0.0 <= args.llm_rate <= 1.0:
        raise UserError(f"--llm-rate must be between 0 and 1, got {args.llm_rate}")
    return {"spec": args.llm, "url": args.llm_url, "model": args.llm_model, "rate": args.llm_rate,
            "max_calls": args.llm_max_calls, "max_tokens": args.llm_max_tokens, "max_usd": args.llm_max_usd,
            "prompts": args.prompts, "max_output_tokens": args.llm_max_output_tokens,
            "concurrency": args.llm_concurrency}


def _operators(settings: dict[str, Any] | None, archive: Archive, run_id: str, replay_source: str | None,
               slots: Sequence[str]):
    """Offline operators, plus LLM ones sharing ``rate`` of the children when an LLM is configured."""
    from autopoiesis.llm import Budget, LLMError, Session, parse_specs
    from autopoiesis.operators import llm as llm_ops
    from autopoiesis.operators import offline

    if not settings:
        return None
    try:
        if replay_source:
            session = Session.replay(archive, run_id, replay_source)
        else:
            specs = settings.get("spec") or []
            client = parse_specs([specs] if isinstance(specs, str) else specs, settings.get("url"), settings.get("model"))
            budget = Budget(settings.get("max_calls"), settings.get("max_tokens"), settings.get("max_usd"),
                            int(settings.get("concurrency") or 1))
            session = Session(client, archive, run_id, budget)
        templates = llm_ops.Templates(settings.get("prompts"))
        templates.get("system")
    except LLMError as e:
        raise UserError(str(e)) from None
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    rate = float(settings.get("rate", 0.5))
    reply = int(settings.get("max_output_tokens") or 2048)
    return [(op, w * (1 - rate)) for op, w in offline(slots)] + [
        (llm_ops.Mutate(session, templates, max_tokens=reply), 0.7 * rate),
        (llm_ops.Crossover(session, templates, max_tokens=reply), 0.3 * rate)]


def parse_options(items: list[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` items as adapter options: a VALUE that parses as JSON is that value, else a string."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects KEY=VALUE, got '{item}'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _check_objectives(adapter: Any, objectives: Sequence[str]) -> None:
    from autopoiesis.metrics import Objective, check_reported

    for text in objectives:
        try:
            check_reported([Objective.parse(text)], adapter)
        except ValueError as e:
            raise UserError(f"--objective {text}: {e}") from None
    if not objectives and not getattr(adapter, "objectives", ()):
        raise UserError(f"adapter '{adapter.name}' declares no objectives; pass --objective METRIC")


# -- report -----------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    archive = _open_archive(args.runs_dir, create=False)
    runs = archive.runs()
    if not runs:
        raise UserError(f"no runs in {args.runs_dir}")
    top = [r for r in runs if not archive.run(r["id"])["config"].get("parent")] or runs  # not an online run's evolutions
    if args.list:
        return _list_runs(args, archive, top)
    run = archive.run(args.run or top[-1]["id"])
    if run["config"].get("mode") == "online":
        return _report_online(args, archive, run)
    if args.json:
        print(json.dumps(report_data(archive, run)))
        return 0
    from autopoiesis.online_view import print_source, titled_table

    console = _console()
    cfg = run["config"]
    console.print(f"[bold]run {run['id']}[/]  adapter {run['adapter']}  status {run['status']}  "
                  f"strategy {cfg['strategy']}  seed {cfg['seed']}  objectives {', '.join(cfg.get('objective_list', []))}")

    stats = archive.generation_stats(run["id"])
    table = titled_table("fitness over generations")
    for col in ("gen", "best", "median", "worst", "children", "valid", "failed", "rejected", "dupes"):
        table.add_column(col, justify="right")
    for s in stats:
        table.add_row(str(s["generation"]), number(s.get("best")), number(s.get("median")), number(s.get("worst")),
                      str(s["children"]), str(s["valid"]), str(s["failed"]), str(s["rejected"]), str(s["duplicates"]))
    console.print(table)
    if stats and not stats[-1]["valid"] and run["status"] != "running":
        return print_nothing_valid(console, archive, run, stats[-1]["generation"])

    print_results(console, archive, run["id"])
    if run["status"] != "done" and not cfg.get("parent"):  # killed or interrupted, or still going
        console.print(f"{_how_it_ended(run['status'])} `autopoiesis evolve --resume {run['id']} "
                      f"--runs-dir {args.runs_dir}` goes on where it stopped", highlight=False)

    data = report_data(archive, run)
    lineage = titled_table("lineage of the champion (newest first)")
    for col in ("generation", "program", "operator", "parents", cfg.get("objective_list", ["objective"])[0]):
        lineage.add_column(col)
    for step in data["lineage"]:
        lineage.add_row(str(step["generation"]), step["name"] or step["program"][:8], step["operator"],
                        ", ".join(p[:8] for p in step["parents"]), number(step["objective"]))
    console.print(lineage)

    llm = data["llm"]
    if llm:
        table = titled_table("LLM operators")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, label in (("calls", "calls"), ("failed_calls", "failed calls"), ("retried_errors", "errors retried"),
                           ("prompt_tokens", "prompt tokens"), ("completion_tokens", "completion tokens"),
                           ("usd", "cost (USD)"), ("latency_s", "LLM time (s)"), ("children", "LLM children"),
                           ("valid_child_rate", "valid-child rate"),
                           ("improvement_per_1k_tokens", "improvement per 1,000 tokens")):
            table.add_row(label, number(llm[key]) if isinstance(llm[key], float) else str(llm[key]))
        console.print(table)

    champion = data.get("champion")
    if champion:
        console.print("[bold]champion source[/]")
        print_source(console, champion["source"])
    return 0


def _list_runs(args: argparse.Namespace, archive: Archive, runs: list[dict[str, Any]]) -> int:
    """One line per run (an online run's evolutions are counted with it): what it was, how it
    ended, and the program it ended with, which ``--policy`` takes by run id."""
    from autopoiesis.online_view import titled_table

    rows = []
    evolutions: dict[str, int] = {}
    for r in archive.runs():
        parent = archive.run(r["id"])["config"].get("parent")
        if parent:
            evolutions[parent] = evolutions.get(parent, 0) + 1
    for r in reversed(runs):
        run = archive.run(r["id"])
        cfg = run["config"]
        online = cfg.get("mode") == "online"
        if online:
            windows, deployments = archive.windows(run["id"]), archive.deployments(run["id"])
            program = windows[-1]["policy"] if windows else None
            kinds = [d["kind"] for d in deployments]
            what = (f"{len(windows)} windows, {evolutions.get(run['id'], 0)} evolutions, "
                    f"{kinds.count('deploy')} deployed, {kinds.count('rollback')} rolled back")
        else:
            champion = next((x for x in archive.results(run["id"]) if x["kind"] == "champion"), None)
            program = champion["program"] if champion else None
            stats = archive.generation_stats(run["id"])
            best = stats[-1].get("best") if stats else None
            what = f"{len(stats) - 1 if stats else 0} generations" + (f", best {number(best)}" if best is not None else "")
        rows.append({"run": run["id"], "adapter": run["adapter"], "mode": "online" if online else "offline",
                     "status": run["status"], "started": run["created"],
                     "objective": ", ".join(cfg.get("objective_list") or []), "progress": what, "program": program})
    if args.json:
        print(json.dumps(rows))
        return 0
    table = titled_table(f"runs in {args.runs_dir} (newest first; --policy RUN takes the program a run ended with)")
    for col in ("run", "adapter", "mode", "status", "started", "objective", "progress", "program"):
        table.add_column(col, no_wrap=col not in ("adapter", "objective", "progress"))  # ids stay whole, to copy
    for row in rows:
        table.add_row(row["run"], row["adapter"], row["mode"], row["status"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started"])), row["objective"],
                      row["progress"], (row["program"] or "-")[:8])
    _console().print(table)
    return 0


def _report_online(args: argparse.Namespace, archive: Archive, run: dict[str, Any]) -> int:
    from autopoiesis.online_view import print_report

    run_id = run["id"]
    figure = Path(args.runs_dir) / run_id / "online.png"
    windows = archive.windows(run_id)
    last = archive.program(windows[-1]["policy"]) if windows else None  # what it served last
    if args.json:
        print(json.dumps({"run": run_id, "status": run["status"], "mode": "online",
                          "windows": windows, "deployments": archive.deployments(run_id),
                          "live": next((r["train"] for r in archive.results(run_id) if r["kind"] == "live"), None),
                          "last_policy": {"program": last.id, "name": last.name, "source": last.source} if last else None,
                          "plot": str(figure) if figure.exists() else None}))
        return 0
    console = _console()
    console.print(f"[bold]online run {run_id}[/]  adapter {run['adapter']}  status {run['status']}")
    print_report(console, archive, run_id, figure if figure.exists() else None, source=True)
    if run["status"] != "done":
        console.print(f"{_how_it_ended(run['status'])} its windows end here; "
                      f"{_online_again(run, args.runs_dir)} starts a new run from what it served last", highlight=False)
    return 0


# -- adapters ---------------------------------------------------------------------------
def cmd_adapters() -> int:
    from autopoiesis.online_view import titled_table

    from autopoiesis.adapters.base import AdapterError, load_adapter, registered

    console = _console()
    found = registered()
    if not found:
        console.print("no adapters registered. Use --adapter module:Class or --adapter path/to/file.py, "
                      "or install a package with an 'autopoiesis.adapters' entry point.")
        return 0
    table = titled_table("registered adapters")
    for col in ("name", "source", "slots", "objectives"):
        table.add_column(col)
    for name, ep in sorted(found.items()):
        try:
            adapter = load_adapter(name)
            slots = "\n".join(slot.signature for slot in adapter.slots())
            objectives = ", ".join(str(o) for o in adapter.objectives)
        except AdapterError as e:
            try:  # an adapter that needs options (servers to attach to) still has class-level slots
                cls = ep.load()
                adapter = cls.__new__(cls)
                slots = "\n".join(slot.signature for slot in adapter.slots())
                objectives = ", ".join(str(o) for o in adapter.objectives)
            except Exception:  # noqa: BLE001
                slots, objectives = f"[red]{e}[/]", ""
        except Exception as e:  # a broken third-party adapter must not hide the others
            slots, objectives = f"[red]fails: {type(e).__name__}: {e}[/]", ""
        table.add_row(name, ep.value, slots, objectives)
    console.print(table)
    return 0


# -- simulate ---------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from autopoiesis.online_view import titled_table

    from autopoiesis.adapters.simulator import SimulatorAdapter, scenario as scenarios
    from autopoiesis.adapters.simulator.slots import SLOTS
    from autopoiesis.evaluate import Evaluator, Limits, Task
    from autopoiesis.sandbox import Rejected, check

    console = _console()
    if args.list:
        table = titled_table("scenarios")
        table.add_column("name")
        table.add_column("description")
        for name in scenarios.names():
            table.add_row(name, scenarios.describe(name))
        console.print(table)
        for slot in SLOTS:
            console.print(f"[bold]{slot.name}[/] baselines: {', '.join(slot.baselines)}")
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
    archive = _archive_with_runs(run_ids[0], args.runs_dir) if run_ids else None
    try:
        sources = [_read_policy(spec, SLOTS) if Path(spec).is_file() else _run_program(spec, archive).source
                   for spec in args.policy]
    finally:
        if archive is not None:
            archive.close()
    source = "\n\n".join(sources)
    defined = _defined(source, SLOTS) or set()
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


# -- helpers ----------------------------------------------------------------------------
def _read_policy(path: str, slots) -> str:
    """A policy file's text; one that defines none of the slots is a mistake (the wrong file)."""
    try:
        source = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read policy file {path}: {getattr(e, 'strerror', None) or e}") from None
    if _defined(source, slots) == set():
        raise UserError(f"policy file {path} defines none of the slots "
                        f"({', '.join(slot.name for slot in slots)}): it needs a top-level `def SLOT(...)`")
    return source


def _defined(source: str, slots) -> set[str] | None:
    """The slots ``source`` defines at its top level (None when it does not parse: the sandbox says why)."""
    try:
        return {slot.name for slot in slots if function_source(source, slot.name)}
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return None


def _policy_file(path: str, slots, base: Program) -> Program:
    """A file of policy functions as a whole program: the slots it leaves out keep ``base``'s."""
    source = _read_policy(path, slots)
    defined = _defined(source, slots) or {slot.name for slot in slots}
    for slot in slots:
        found = None if slot.name in defined else function_source(base.source, slot.name)
        if found:
            source += "\n\n" + "\n".join(base.source.splitlines()[found[1] - 1:found[2]]) + "\n"
    return Program(source, name=Path(path).stem)


#: evolve's flags that set what a run is (its Config fields), which a resumed run keeps
RUN_SETTINGS = {"population": "population", "generations": "generations", "seed": "seed", "objective": "objectives",
                "strategy": "strategy", "budget": "budget", "train_snapshots": "train_snapshots",
                "held_out_snapshots": "held_out_snapshots", "timeout": "timeout", "memory_mb": "memory_mb"}


def _resumed_config(args: argparse.Namespace, config, spec: str, options: Mapping[str, Any],
                    objectives: Sequence[str]):
    """The stored config of the run ``--resume`` names. A flag that would change what the run
    is (``--memory-mb 2048`` after it ran out of memory) is refused, not ignored in silence;
    the same value as the run's is fine (a command repeated with ``--resume`` added), and
    ``--workers`` is taken: results do not depend on it."""
    from autopoiesis.adapters.base import canonical_spec

    defaults = build_parser().parse_args(["evolve"])  # what each flag is when not given
    given = {flag: getattr(args, flag) for flag in RUN_SETTINGS if getattr(args, flag) != getattr(defaults, flag)}
    differs = []
    for flag, value in given.items():
        stored = getattr(config, RUN_SETTINGS[flag])
        if flag == "objective":  # as the run stored them: the adapter's first when none was given
            from autopoiesis.metrics import Objective

            value, stored = [str(Objective.parse(text)) for text in value], list(objectives)
        if value != stored:
            differs.append(f"--{flag.replace('_', '-')} {_shown(value)} (the run's: {_shown(stored)})")
    if args.adapter and canonical_spec(args.adapter) != spec:
        differs.append(f"--adapter {args.adapter} (the run's: {spec})")
    if args.scenario and args.scenario != options.get("scenario"):
        differs.append(f"--scenario {args.scenario} (the run's: {options.get('scenario')})")
    for key, value in parse_options(args.option).items():
        if options.get(key) != value:
            differs.append(f"--option {key}={value} (the run's: {options.get(key)})")
    if differs:
        raise UserError(f"--resume goes on with the settings run {args.resume} began with; {'; '.join(differs)}. "
                        "Leave them out, or start a new run with them")
    if args.workers != defaults.workers:
        config = dataclasses.replace(config, workers=args.workers)
    return config


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_resumable(run_id: str, run: dict, runs_dir: str) -> None:
    """Only an offline run can go on where it stopped: an online run's live system (and with
    it the snapshots its evolutions bred on) is gone."""
    config = run["config"]
    if config.get("mode") == "online":
        raise UserError(f"run {run_id} is an online run: the live system it served is gone, so it cannot be "
                        f"resumed; start a new one from what it served last with {_online_again(run, runs_dir)} "
                        f"(its windows and deployments so far: autopoiesis report {run_id})")
    if config.get("parent"):
        raise UserError(f"run {run_id} is an evolution of online run {config['parent']}, bred on a snapshot of "
                        f"its live system; it cannot be resumed on its own (see autopoiesis report {config['parent']})")


def _how_it_ended(status: str) -> str:
    """The start of a report's last line for a run that is not done. A killed run stays
    'running' (nothing records a death); an interrupted or failed one says so."""
    return {"interrupted": "interrupted:", "failed": "failed:",
            "budget spent": "its LLM budget ran out (raise --llm-max-calls, -tokens or -usd with --resume):"}.get(
        status, "not finished: if it is no longer running,")


def _online_again(run: dict, runs_dir: str) -> str:
    """The command that starts a new online run from what ``run`` served last."""
    options = dict(run["config"].get("adapter_options", {}))
    scenario = f" --scenario {options.pop('scenario')}" if "scenario" in options else ""
    return (f"`autopoiesis evolve --online --adapter {run['adapter']}{scenario} --policy {run['id']} --runs-dir "
            f"{runs_dir}`" + (" and the options it ran with" if options else ""))


def _policy_program(spec: str, adapter, archive: Archive | None) -> Program:
    """``--policy FILE|RUN`` as a whole program for ``adapter``, checked to load: a policy
    file (the slots it leaves out keep the first baselines'), or what a run in ``archive`` ended with."""
    if Path(spec).is_file():
        program = _policy_file(spec, adapter.slots(), next(iter(adapter.baselines().values())))
    else:
        program = _run_program(spec, archive)
    _check_loads(program, adapter, spec)
    return program


def _archive_with_runs(spec: str, runs_dir: str) -> Archive:
    """The archive a ``--policy RUN`` is looked up in (``spec`` is no file)."""
    if not (Path(runs_dir) / ARCHIVE_NAME).exists():
        raise UserError(f"--policy {spec}: no such file, and no archive in {runs_dir} to find a run in")
    return _open_archive(runs_dir, create=False)


def _run_program(spec: str, archive: Archive) -> Program:
    """What run ``spec`` ended with: an offline run's champion (an unfinished one's latest
    generation's best), or the program an online run served last; or the archived program
    whose id starts with ``spec`` (the 8 characters the report's tables show)."""
    try:
        run = archive.run(spec)
    except ArchiveError:
        found = archive.program_ids(spec) if len(spec) >= 6 else []
        if len(found) == 1:
            return archive.program(found[0])
        if found:
            raise UserError(f"--policy {spec}: more than one archived program id starts so; give more of it") from None
        raise UserError(f"--policy {spec}: no such file, and no run of that id or a program id in {archive.path}") from None
    if run["config"].get("mode") == "online":
        windows = archive.windows(spec)
        pid = windows[-1]["policy"] if windows else None
    else:
        champion = next((r for r in archive.results(spec) if r["kind"] == "champion"), None)
        stats = archive.generation_stats(spec)
        pid = champion["program"] if champion else (stats[-1].get("champion") if stats else None)
    if pid is None:
        raise UserError(f"--policy {spec}: that run has no program to start from yet")
    return archive.program(pid)


def _check_loads(program: Program, adapter, spec: str) -> None:
    """Compile ``program`` as deploying it would first: a mistake is said before the live system starts."""
    from autopoiesis import sandbox

    try:
        sandbox.compile_policy(program.source, adapter.slots(), program.id)
    except sandbox.Rejected as e:
        raise UserError(f"--policy {spec} is rejected for adapter {adapter.name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - its module-level code failed
        raise UserError(f"--policy {spec} fails to load: {type(e).__name__}: {e}") from None


def _console(stderr: bool = False) -> Console:
    """Stdout (or stderr) console; wide when writing to a file or pipe, so tables and log
    lines stay legible in logs."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def _open_archive(runs_dir: str, create: bool) -> Archive:
    path = Path(runs_dir) / ARCHIVE_NAME
    if not create and not path.exists():
        raise UserError(f"no archive at {path} (run `autopoiesis evolve` first, or pass --runs-dir)")
    return Archive(path)


def positive_int(text: str) -> int:
    """An argparse type (the benchmarks use it too): a mistake is one line of usage, not a traceback."""
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _parse(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _parse(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'") from None


if __name__ == "__main__":
    sys.exit(main())
