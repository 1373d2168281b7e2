"""``autopoiesis evolve``: an offline evolution (resumable), or with ``--online`` one that
evolves while the live system serves; the LLM operators' settings and a resumed run's."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from autopoiesis.archive import Archive
from autopoiesis.report import print_results

from .common import UserError, interrupted_status, new_console, open_archive, parse_options
from .parser import build_parser, live_options
from .policy import archive_with_runs, policy_program
from .report import online_again


def cmd_evolve(args: argparse.Namespace) -> int:
    from autopoiesis.adapters.base import canonical_spec, load_adapter
    from autopoiesis.evolution import Config, Evolution

    llm_settings = _llm_settings(args)
    replaying = any(s.startswith("replay:") for s in (llm_settings or {}).get("spec") or [])
    # a new run creates the archive only once its adapter loads: a typo leaves no empty runs/ behind
    archive = open_archive(args.runs_dir, create=False) if args.resume or replaying else None
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
        options.update(live_options(args))
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
        new_console(stderr=True).print(f"adapter {adapter.name} evolves on its live system: running with --online")
        args.online = True
        config = Config.from_dict({**config.to_dict(), "population": args.population or 8,
                                   "generations": 3 if args.generations is None else args.generations})
    initial = None
    if args.policy:
        if not args.online:
            raise UserError("--policy sets what an online run starts serving; add --online "
                            "(offline evolution starts from the baselines)")
        if not Path(args.policy).is_file() and archive is None:  # a run id: found in the archive there is
            archive = archive_with_runs(args.policy, args.runs_dir)
        initial = policy_program(args.policy, adapter, archive)
    archive = archive or open_archive(args.runs_dir, create=True)
    if args.online:
        if args.resume:
            raise UserError("an online run serves a live system and cannot be resumed; start a new one "
                            "(its windows and deployments so far are in the archive: autopoiesis report RUN)")
        return _cmd_online(args, adapter, spec, options, config, archive, llm_settings, replay_source, initial)

    console = new_console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), console=console, transient=True,
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
    operators = operators_for(llm_settings, archive, run_id, replay_source, [s.name for s in adapter.slots()])
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
        out = new_console()
        print_results(out, archive, result.run_id, training=False)
        out.print(Text.assemble("\nrun ", (result.run_id, "bold"), f": {result.programs} programs scored "
                                f"({result.evaluated} evaluations run, {result.reused} reused). "
                                f"Details: autopoiesis report {result.run_id} --runs-dir {args.runs_dir}"))
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
    operators = operators_for(llm_settings, archive, run_id, replay_source, [s.name for s in adapter.slots()])
    sessions = [op.session for op, _ in operators or [] if hasattr(op, "session")]

    def replayed_latency() -> float:  # replayed LLM answers come at once; their recorded latency still counts
        return sessions[0].ledger.latency_s if sessions and sessions[0].replaying else 0.0

    console = new_console(stderr=True)
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
        out = new_console()
        print_report(out, archive, run_id, figure)
        _print_llm_line(out, archive, run_id)
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


def operators_for(settings: dict[str, Any] | None, archive: Archive, run_id: str, replay_source: str | None,
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


def _check_objectives(adapter: Any, objectives: Sequence[str]) -> None:
    from autopoiesis.metrics import Objective, check_reported

    for text in objectives:
        try:
            check_reported([Objective.parse(text)], adapter)
        except ValueError as e:
            raise UserError(f"--objective {text}: {e}") from None
    if not objectives and not getattr(adapter, "objectives", ()):
        raise UserError(f"adapter '{adapter.name}' declares no objectives; pass --objective METRIC")


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
                        f"resumed; start a new one from what it served last with {online_again(run, runs_dir)} "
                        f"(its windows and deployments so far: autopoiesis report {run_id})")
    if config.get("parent"):
        raise UserError(f"run {run_id} is an evolution of online run {config['parent']}, bred on a snapshot of "
                        f"its live system; it cannot be resumed on its own (see autopoiesis report {config['parent']})")
