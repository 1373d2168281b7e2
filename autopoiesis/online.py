"""Online self-evolution: policies evolve while the system serves.

Two planes. The serving plane is the adapter's live system: it calls the deployed
policy on its hot path (through ``hot_path.HotPath``, which answers any failing call with the
incumbent's decision) and reports ``RequestRecord``s, which the controller cuts into
windows. The evolution plane runs in a background thread: when a trigger fires (a
period, drift in the windows, a cluster event), it snapshots the last windows, evolves
programs scored by counterfactual replay of that snapshot on the adapter's twin, and
offers the champion if it beats the incumbent on the same snapshot by a margin.

Time is honest: the live system keeps serving the incumbent while evolution runs, and
the champion goes live at the live time the evolution finished (for a simulated live
system, the wall-clock time evolution took, LLM latency included, is added to the
simulated clock). The ``Guard`` then watches the next windows and rolls back a
deployment whose live fitness regresses against the incumbent's recent windows.
"""

from __future__ import annotations

import inspect
import math
import queue
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from . import sandbox
from .adapters.base import AdapterError, adapter_code, checked_slots
from .archive import Archive, ArchiveError
from .choice import Choice
from .evaluate import Evaluator, Limits, Task
from .evolution import Config, Evolution, new_run_id, require_number, require_whole
from .guard import Guard
from .hot_path import HotPath, hot_path  # noqa: F401 - where adapters written before hot_path.py import them
from .metrics import Objective, RequestRecord, RollingWindow, SLO, Snapshot, check_reported, open_latency
from .program import Program
from .triggers import Triggers, workload_moved


class LiveSystemFailed(AdapterError):
    """The adapter's live system failed mid-run (its own call raised); the run is marked
    failed and the windows served before it stay in the archive."""


@contextmanager
def adapters_own(adapter: Any, call: str):
    """A failure inside the adapter's ``call`` is said as the adapter's, naming the call."""
    try:
        yield
    except (KeyboardInterrupt, sandbox.Rejected):
        raise
    except AdapterError as e:
        raise LiveSystemFailed(str(e)) from e
    except Exception as e:
        raise LiveSystemFailed(f"adapter {adapter.name}: {call} failed: {type(e).__name__}: {e} "
                               "(AUTOPOIESIS_DEBUG=1 shows the traceback)") from e


# -- configuration ------------------------------------------------------------------------
@dataclass
class OnlineConfig:
    """The online loop's knobs (docs/online.md explains each)."""

    window_s: float = 30.0  # length of one live window
    history: int = 2  # windows the twin replays (the snapshot)
    horizon: int = 4  # windows a winner is scored over (the history's arrivals repeat to fill it)
    period: int = 4  # windows between periodic evolutions (0: only drift triggers)
    cooldown: int = 2  # windows after a trigger before drift may trigger again
    drift_signals: tuple[str, ...] = ("rate", "mean_prompt", "slo_attainment")
    drift_threshold: float = 1.0  # Page-Hinkley threshold (relative units)
    margin: float = 0.01  # the champion must beat the incumbent on the snapshot by this (relative)
    replan_margin: float = 0.05  # ... by this when it disrupts more on the twin (the adapter's disruption_metric)
    holdout: bool = True  # a periodic trigger's champion must also not lose on the stretch before the snapshot
    guard_windows: int = 2
    guard_tolerance: float = 0.25
    guard_metric: str = ""  # default: the adapter's guard_metric, else the objective
    max_fallback_rate: float = 0.05
    isolate: bool | None = None  # deployed programs in decision processes (None: the adapter's isolate_policies)
    evolution_cost_s: float | None = None  # None: the measured wall-clock time; a number: fixed (reproducible)
    live_seed: int = 1000  # the live workload's seed (simulated live systems)
    similar: int = 2  # earlier winners for similar conditions seeded into each evolution
    recall: bool = True  # ... counting those confirmed in earlier online runs of this adapter in the same archive
    max_windows: int | None = None  # stop after this many windows (default: when the live system is done)
    step_s: float = 5.0  # the serving loop looks at the live system at least this often (cluster events act at once)
    poll_s: float = 0.05  # ... and this often for a finished evolution, on a wall-clock adapter

    def __post_init__(self) -> None:
        """A caller's mistake is one ValueError naming the knob (``window_s=0`` served windows of no time
        that never advanced the live system)."""
        for name, low in (("history", 1), ("horizon", 1), ("period", 0), ("cooldown", 0), ("guard_windows", 1),
                          ("live_seed", 0), ("similar", 0)):
            require_whole(self, name, low)
        if self.max_windows is not None:
            require_whole(self, "max_windows", 1)
        for name in ("window_s", "drift_threshold", "guard_tolerance", "poll_s"):
            require_number(self, name, 0, above=True)
        for name in ("margin", "replan_margin", "step_s"):
            require_number(self, name, 0)
        require_number(self, "max_fallback_rate", 0, high=1)
        if self.evolution_cost_s is not None:
            require_number(self, "evolution_cost_s", 0)
        if isinstance(self.drift_signals, str) or not all(isinstance(s, str) for s in self.drift_signals):
            raise ValueError(f"OnlineConfig.drift_signals must be a tuple of signal names, got {self.drift_signals!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OnlineConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "drift_signals" in known:
            known["drift_signals"] = tuple(known["drift_signals"])
        return cls(**known)


@dataclass
class Window:
    index: int
    start: float
    end: float
    policy: str  # live at the end of the window
    swapped: bool  # a deployment or rollback happened inside it
    metrics: dict[str, float]
    arrivals: int
    calls: int
    fallbacks: int
    triggers: list[str] = field(default_factory=list)
    stalls: int = 0  # calls that passed the deadline in real time, not in CPU time, and answered


@dataclass
class Deployment:
    time: float
    kind: str  # initial | deploy | rollback | confirm | rejected | unfinished (serving ended first)
    program: str
    reason: str = ""
    incumbent_fitness: float | None = None  # on the twin snapshot
    champion_fitness: float | None = None
    evolution_s: float = 0.0
    evaluations: int = 0
    conditions: dict[str, float] = field(default_factory=dict)  # what an evolved program was bred for


@dataclass
class _Job:
    """One piece of the evolution plane's work: an evolution, a guard's replay, or a window check."""

    kind: str  # "evolve": breed on the snapshot; "guard": replay a suspect window with the incumbent;
    # "check": score the live program on a closed window for the numbers the adapter adds to it
    number: int
    started_live: float
    started_wall: float
    snapshot: Snapshot
    incumbent: Program
    conditions: dict[str, float] = field(default_factory=dict)
    holdout: Snapshot | None = None  # the stretch before the snapshot (periodic triggers: nothing changed)
    candidate: Program | None = None  # guard jobs: the deployment under watch
    window: Window | None = None  # check jobs: the window the numbers go to, and their names
    names: tuple[str, ...] = ()
    why: str = ""
    finished: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: str | None = None
    wall_s: float = 0.0
    extra_s: float = 0.0  # time not spent in this process (recorded LLM latency on replay)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


# -- the controller ----------------------------------------------------------------------
class Controller:
    """The online loop: serve, watch windows, evolve on a trigger, deploy, guard, roll back."""

    def __init__(self, adapter: Any, config: OnlineConfig | None = None, evolution: Config | None = None,
                 archive: Archive | None = None, operators=None, run_id: str | None = None,
                 adapter_spec: str | None = None, adapter_options: Mapping[str, Any] | None = None,
                 initial: Program | None = None, extra_latency: Callable[[], float] | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None, extra_config: Mapping | None = None):
        self.adapter = adapter
        self.config = config or OnlineConfig()
        self.evolution_config = evolution or Config(population=8, generations=3, held_out_snapshots=0)
        self.archive = archive or Archive()
        self.operators = operators
        self.run_id = run_id or new_run_id(f"{adapter.name}-online")
        self.adapter_spec = adapter_spec or type(adapter).__name__
        self.adapter_options = dict(adapter_options or {})
        self.extra_config = dict(extra_config or {})
        self.on_event = on_event or (lambda kind, data: None)
        self.extra_latency = extra_latency or (lambda: 0.0)  # seconds the operators spent outside wall time
        self.slots = checked_slots(adapter)
        objectives = self.evolution_config.objectives or (str(adapter.objectives[0]),)
        self.objective = Objective.parse(objectives[0])
        check_reported([self.objective], adapter)
        guard_name = self.config.guard_metric or getattr(adapter, "guard_metric", "") or self.objective.name
        guard_direction = next((o.direction for o in adapter.objectives if o.name == guard_name), "min")
        self.guard = Guard(Objective(guard_name, guard_direction), self.config.guard_windows,
                           self.config.guard_tolerance, self.config.max_fallback_rate)
        self.baselines = adapter.baselines()
        self.baseline = initial or next(iter(self.baselines.values()))
        self.fallback = next(iter(self.baselines.values()))  # trusted, human-designed
        self.windows: list[Window] = []
        self.deployments: list[Deployment] = []
        self.winners: list[tuple[dict[str, float], Program]] = []  # (conditions, program) library
        self.recalled: dict[str, str] = {}  # program id -> the earlier run whose guard confirmed it
        self.refused: set[str] = set()  # rolled back: never deployed again
        self.choice = Choice(self.objective, self.slots, self.config.margin, self.config.replan_margin,
                             getattr(adapter, "disruption_metric", ""), self.refused)
        self.evaluations = 0
        self.forced: list[tuple[float, Program]] = []
        self.stopping = threading.Event()  # set when serving ends: an evolution in flight stops

    def force(self, program: Program, at: float) -> None:
        """Deploy ``program`` at live time ``at`` without evolving it (tests, canaries); the Guard still watches."""
        self.forced.append((at, program))
        self.forced.sort(key=lambda tp: tp[0])

    def _recall(self) -> None:
        """Load the winners earlier online runs of this adapter kept past the guard (``Archive.
        confirmed_winners``) into the library evolutions are seeded from: a burst like last
        week's starts its evolution with last week's answer among the seeds. A seed is only
        scored; it goes live only by beating the incumbent on this run's twin."""
        baselines = {p.id for p in self.baselines.values()}  # seeded every time anyway
        for winner in self.archive.confirmed_winners(self.adapter_spec, exclude=self.run_id):
            if winner["program"] in baselines:
                continue
            try:
                program = self.archive.program(winner["program"])
            except ArchiveError:
                continue
            self.winners.append((winner["conditions"], program))
            self.recalled.setdefault(program.id, winner["run"])
        if self.recalled:
            runs = len(set(self.recalled.values()))
            self.on_event("recall", {"programs": len(self.recalled), "runs": runs})

    # -- public --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        adapter = self.adapter
        if hasattr(adapter, "check_live"):
            adapter.check_live()
        isolate = self.config.isolate if self.config.isolate is not None else getattr(adapter, "isolate_policies", False)
        self.config = cfg = replace(self.config, isolate=bool(isolate))
        adapter.isolate_policies = cfg.isolate  # its deploy passes it to hot_path
        if cfg.recall:
            self._recall()
        self.archive.create_run(self.run_id, self.adapter_spec, {
            "mode": "online", "online": cfg.to_dict(), **self.evolution_config.to_dict(),
            "recalled": dict(self.recalled),
            "objective_list": [str(self.objective)], "adapter_options": self.adapter_options,
            "headline": list(getattr(adapter, "headline", ()) or [o.name for o in adapter.objectives]),
            **self.extra_config})
        self.triggers = Triggers(cfg.drift_signals, cfg.drift_threshold, cfg.cooldown, cfg.period)
        limits = Limits(timeout=self.evolution_config.timeout, memory_mb=self.evolution_config.memory_mb)
        self.records: list[RequestRecord] = []
        self.pending: list[RequestRecord] = []
        self.calls = self.fallback_calls = self.stalled_calls = 0
        self.arrivals = 0
        self.arrival_prompts: list[int] = []
        self.prompts_told = False  # the adapter gives arrivals' prompt lengths (Observation.arrival_prompts)
        self.events: list[tuple[float, str, str]] = []
        self.job: _Job | None = None
        self.checks: list[_Job] = []  # window checks queued on the evolution plane, not yet collected
        self.jobs = 0
        self.swapped = False
        self.signals_checked = False
        self.in_flight: list[float] = []
        status = "done"
        self.queue: queue.Queue = queue.Queue()
        self.stopping.clear()
        plane = threading.Thread(target=self._plane, args=(limits,), name="evolution-plane", daemon=True)
        try:
            with adapters_own(adapter, f"start(seed={cfg.live_seed})"):
                adapter.start(seed=cfg.live_seed)
        except BaseException:
            self.archive.set_status(self.run_id, "failed")
            raise
        self.slo = getattr(adapter, "slo", None) or SLO()
        plane.start()
        try:
            self.incumbent = self.baseline
            self.previous: Program | None = None
            self._deploy(self.incumbent, adapter.now(), "initial", "the starting policy")
            self._loop()
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            self.stopping.set()  # its champion would come after the run: stop it before its next child
            self.queue.put(None)
            try:
                plane.join()
            except KeyboardInterrupt:  # a second Ctrl-C: leave now (a daemon thread; the workers die with us)
                status = "interrupted" if status == "done" else status
                interrupted_again = True
            else:
                interrupted_again = False
            try:
                if status == "done":
                    self._collect_checks()
                    self._record_unfinished()
                    summary = self.summary()  # asks the adapter's live_metrics(), which may fail
                    self.archive.save_result(self.run_id, "live", "whole run", self.live.id,
                                             summary["live"] or summary["metrics"], None)
            except BaseException:
                status = "failed"
                raise
            finally:  # whatever failed, the live system stops and the run says how it ended
                self._stop(status)
            if interrupted_again:
                raise KeyboardInterrupt
        return summary

    def _stop(self, status: str) -> None:
        """Stop the live system and record how the run ended. A failing ``stop()`` fails a run
        that was done; after an earlier failure it is dropped, so the first error is the one said."""
        try:
            with adapters_own(self.adapter, "stop()"):
                self.adapter.stop()
        except LiveSystemFailed:
            if status == "done":
                status = "failed"
                raise
        finally:
            self.archive.set_status(self.run_id, status)

    def _plane(self, limits: Limits) -> None:
        """The evolution plane: one long-lived thread (its worker processes outlive each job)."""
        try:
            with Evaluator(self.adapter, self.evolution_config.workers, limits,
                           cache=self.archive.cache_for(self.run_id, adapter_code(self.adapter))) as evaluator:
                self.evaluator = evaluator
                while (job := self.queue.get()) is not None:
                    try:
                        self._evolve(job)
                    finally:
                        job.finished.set()
        except Exception as e:  # noqa: BLE001 - without a plane, serving goes on with the incumbent
            while (job := self.queue.get()) is not None:
                job.error = f"the evolution plane is down: {type(e).__name__}: {e}"
                job.finished.set()

    def summary(self) -> dict[str, Any]:
        window = RollingWindow()
        for record in self.records:
            window.add(record)
        overall = window.summary(self.slo) if self.records else {}
        return {
            "run": self.run_id, "windows": len(self.windows), "requests": len(self.records),
            "evolutions": self.jobs, "evaluations": self.evaluations, "recalled": len(self.recalled),
            "deployments": sum(d.kind == "deploy" for d in self.deployments),
            "rollbacks": sum(d.kind == "rollback" for d in self.deployments),
            "fallbacks": sum(w.fallbacks for w in self.windows),
            "stalls": sum(w.stalls for w in self.windows),
            "final_policy": self.live.id, "metrics": overall,  # served last (the Guard may still watch it)
            "live": self._live_metrics(),
        }

    def _live_metrics(self) -> dict[str, float]:
        live_metrics = getattr(self.adapter, "live_metrics", None)
        if live_metrics is None:
            return {}
        with adapters_own(self.adapter, "live_metrics()"):
            return live_metrics()

    # -- the serving loop -----------------------------------------------------------------
    def _loop(self) -> None:
        cfg, adapter = self.config, self.adapter
        window_start = adapter.now()
        next_close = window_start + cfg.window_s
        while True:
            job = self.job
            target = next_close
            if job is not None:
                ready = self._ready_at(job)
                if ready is not None:
                    target = min(target, ready)
                elif adapter.wall_clock:  # it serves on meanwhile: look back for the result every poll_s
                    target = min(target, adapter.now() + cfg.poll_s)
                else:  # a simulated clock runs no further than the evolution has
                    target = min(target, self._job_clock(job))
            if self.forced:
                target = min(target, self.forced[0][0])
            if cfg.step_s > 0:
                target = min(target, adapter.now() + cfg.step_s)
            with adapters_own(adapter, f"observe({target:.1f})"):
                observation = adapter.observe(target)
            self._ingest(observation)
            if self.checks:
                self._collect_checks()
            closes = observation.now >= next_close or observation.finished
            if observation.events and not closes:  # at a window's end, closing it triggers
                self._on_cluster_change(observation.now)
            if closes:
                last = observation.finished or bool(cfg.max_windows and len(self.windows) + 1 >= cfg.max_windows)
                self._close_window(window_start, observation.now, last)
                window_start, next_close = observation.now, observation.now + cfg.window_s
            if observation.finished or (cfg.max_windows and len(self.windows) >= cfg.max_windows):
                return
            if self.forced and observation.now >= self.forced[0][0]:
                _, program = self.forced.pop(0)
                self._deploy(program, observation.now, "deploy", "forced by the caller")
            if job is not None and job.done and observation.now >= (self._ready_at(job) or math.inf):
                self.job = None
                self._conclude(job, observation.now)
                if self.triggers.owed and self.job is None and not self.guard.watching:
                    self._start_owed(observation.now)  # a change that came meanwhile: now, not at the window's end
            if self.job is not None and not self.job.done and target < next_close and not adapter.wall_clock:
                time.sleep(0.005)  # serving at the evolution's pace; let it work

    def _record_unfinished(self) -> None:
        """Say so when serving ended before the evolution plane's job in flight could act."""
        job, end = self.job, (self.windows[-1].end if self.windows else None)
        if job is None or end is None:
            return
        if job.kind == "guard":
            self._record(Deployment(end, "unfinished", job.candidate.id, f"serving ended at {end:.0f} s, before "
                                    f"the guard's replay of the window that ended at {job.started_live:.0f} s"))
        else:
            self._record(Deployment(end, "unfinished", job.incumbent.id, f"serving ended at {end:.0f} s, before "
                                    f"the evolution that began at {job.started_live:.0f} s could deploy",
                                    evolution_s=end - job.started_live))

    def _job_clock(self, job: _Job) -> float:
        """The live time an unfinished evolution has reached."""
        if self.config.evolution_cost_s is not None:
            if job.started_live + self.config.evolution_cost_s <= self.adapter.now():
                job.finished.wait()  # a fixed cost: serving waits for the result at that instant
            return job.started_live + self.config.evolution_cost_s
        return job.started_live + (time.monotonic() - job.started_wall)

    def _ready_at(self, job: _Job) -> float | None:
        if not job.done:
            return None
        if self.config.evolution_cost_s is not None:
            return job.started_live + self.config.evolution_cost_s
        return job.started_live + job.wall_s + job.extra_s

    def _ingest(self, observation) -> None:
        self.pending.extend(observation.records)
        self.records.extend(observation.records)
        self.arrivals += observation.arrivals
        self.arrival_prompts.extend(observation.arrival_prompts)
        self.events.extend(observation.events)
        self.in_flight = observation.in_flight
        self.calls += sum(observation.calls.values())
        self.fallback_calls += sum(observation.fallbacks.values())
        self.stalled_calls += observation.stalls

    def _close_window(self, start: float, end: float, last: bool) -> None:
        """Close a window; ``last``: serving ends with it, so nothing it shows can be acted on."""
        cfg = self.config
        window = RollingWindow()
        for record in self.pending:
            window.add(record)
        metrics = window.summary(self.slo) if self.pending else {"requests": 0.0}
        metrics["rate"] = self.arrivals / max(end - start, 1e-9)
        # the length mix, for drift detection and the conditions winners are filed under: of what
        # arrived where the adapter tells (what finished lags the arrivals by the backlog), else of what
        # finished. Once it has told, a window nothing arrived in has no mix: the backlog draining after
        # the last arrival is not a change of workload (its finished prompts set off a false drift)
        self.prompts_told = self.prompts_told or bool(self.arrival_prompts)
        lengths = self.arrival_prompts if self.prompts_told else [r.prompt_tokens for r in self.pending]
        if lengths:
            metrics["mean_prompt"] = statistics.fmean(lengths)
        metrics["in_flight"] = float(len(self.in_flight))
        open_e2e = open_latency(self.pending, self.in_flight, end)
        if open_e2e is not None:
            metrics["mean_e2e_open"] = open_e2e
        check = self._window_check(start, end)  # before window_metrics, which may refit the twin on this window
        extra = getattr(self.adapter, "window_metrics", None)  # e.g. the twin's cost level
        if extra is not None:
            with adapters_own(self.adapter, f"window_metrics({start:.1f}, {end:.1f}, ...)"):
                metrics.update(extra(start, end, self.live))
        w = Window(len(self.windows), start, end, self.live.id, self.swapped, metrics, self.arrivals,
                   self.calls, self.fallback_calls, stalls=self.stalled_calls)
        self.swapped = False
        cluster_events = list(self.events)
        self.pending, self.arrivals, self.calls, self.fallback_calls, self.events = [], 0, 0, 0, []
        self.arrival_prompts = []
        self.stalled_calls = 0
        self.windows.append(w)
        self._guard_window(w, end)
        signals = {k: metrics[k] for k in cfg.drift_signals if k in metrics and metrics.get("requests", 0) > 0}
        if metrics.get("requests", 0) > 0 and not self.signals_checked:  # a name no window has is never tested
            self.signals_checked = True
            missing = [k for k in cfg.drift_signals if k not in metrics]
            if missing:
                self.on_event("warning", {"message": f"drift signal(s) {', '.join(missing)} are not among this "
                                                     f"adapter's window metrics: they never trigger"})
        reasons, w.triggers = self.triggers.window_closed(
            signals, len(cluster_events),
            lambda: workload_moved(self.windows, cfg.history, cfg.drift_signals, self.prompts_told),
            busy=self.job is not None or self.guard.watching, last=last)
        if reasons:
            self._start_job(end, reasons)
        if check is not None:  # after the evolution, if one started: a report never delays it
            snapshot, names = check
            self.checks.append(_Job("check", 0, end, time.monotonic(), snapshot, self.live, window=w,
                                    names=tuple(names)))
            self.queue.put(self.checks[-1])
        self.archive.add_window(self.run_id, w.index, w.start, w.end, w.policy, w.metrics,
                                {"arrivals": w.arrivals, "calls": w.calls, "fallbacks": w.fallbacks, "stalls": w.stalls,
                                 "triggers": w.triggers, "swapped": w.swapped,
                                 "events": [list(e) for e in cluster_events]})
        self.on_event("window", {"window": w, "incumbent": self.incumbent.id, "job": self.job is not None,
                                 "deployments": self.deployments})

    def _window_check(self, start: float, end: float):
        """The adapter's check of a closed window (``window_check``), run on the evolution plane.

        Scoring the live program on a window's replay (the engine's twin error) is CPU work
        that would stop a wall-clock adapter serving; a worker does it, and the numbers join
        the window (and its row in the archive) when they are in."""
        check = getattr(self.adapter, "window_check", None)
        try:
            return check(start, end, self.live) if check is not None else None
        except Exception as e:  # noqa: BLE001 - a report, never a reason to stop serving
            self.on_event("warning", {"message": f"window check failed: {type(e).__name__}: {e}"})
            return None

    def _collect_checks(self) -> None:
        for job in [j for j in self.checks if j.done]:
            self.checks.remove(job)
            outcome = (job.result or {}).get((job.incumbent.id, job.snapshot.key))
            if job.error or outcome is None or not outcome.ok:
                continue
            numbers = {k: outcome.metrics[k] for k in job.names if k in outcome.metrics}
            job.window.metrics.update(numbers)
            self.archive.add_window_metrics(self.run_id, job.window.index, numbers)

    def _on_cluster_change(self, now: float) -> None:
        """GPUs joined, left or got notice: evolve for it now, not at the window's end.

        A re-plan that waits for the window to close leaves joined GPUs idle (or a spot
        notice unused) for up to a window; when an evolution or the guard is busy, the
        change is owed and evolved for once they are done."""
        self.triggers.cluster_changed(len(self.events))
        if self.job is None and not self.guard.watching:
            self._start_owed(now)

    def _start_owed(self, now: float) -> None:
        """Evolve now for the changes owed (``triggers.OWED``), mid-window."""
        self._start_job(now, self.triggers.take_owed())

    # -- guard ----------------------------------------------------------------------------
    def _guard_window(self, w: Window, now: float) -> None:
        if not self.guard.watching:  # a confirmed program can still start failing (a new workload, its state)
            why = self.guard.failing(w.calls, w.fallbacks)
            if why and not w.swapped and self.live.id != self.fallback.id:
                self._verdict("rollback", f"{why}, after it was confirmed", now)
            return
        if w.swapped or self.job is not None:
            return
        verdict, why = self.guard.check(w.metrics, w.calls, w.fallbacks)
        if verdict == "suspect":  # ask the twin: would the incumbent have done better on this window?
            self.jobs += 1
            with adapters_own(self.adapter, f"window_snapshot({w.start:.1f}, {w.end:.1f}, ...)"):
                snapshot = self.adapter.window_snapshot(w.start, w.end, self.incumbent)  # the world had it stayed
            self.job = _Job("guard", self.jobs, now, time.monotonic(), snapshot, self.incumbent,
                            candidate=self.live, why=why)
            self.queue.put(self.job)
        else:
            self._verdict(verdict, why, now)

    def _verdict(self, verdict: str, why: str, now: float) -> None:
        if verdict == "rollback":
            self.refused.add(self.live.id)
            back = self.previous if self.previous is not None and self.previous.id != self.live.id else None
            self.incumbent = back or self.fallback
            self._deploy(self.incumbent, now, "rollback", why)
            self.guard.left = 0
            self.triggers.rolled_back()
        elif verdict == "confirm":
            self.incumbent = self.live
            self._record(Deployment(now, "confirm", self.live.id, f"{self.guard.windows} clean window(s)"))

    def _reference(self) -> dict[str, float]:
        """The incumbent's recent live level of each guard signal (median of its last 3 clean windows)."""
        recent = [w for w in reversed(self.windows) if w.policy == self.incumbent.id and not w.swapped][:3]
        out = {}
        for name in self.guard.signals:
            values = [w.metrics[name] for w in recent if name in w.metrics]
            if values:
                out[name] = statistics.median(values)
        return out

    # -- evolution ------------------------------------------------------------------------
    def _start_job(self, now: float, reasons: list[str]) -> None:
        cfg = self.config
        self.triggers.started()
        self.jobs += 1
        since = max(0.0, now - cfg.history * cfg.window_s)
        snapshot = self._snapshot(since, now)
        conditions = {k: self.windows[-1].metrics.get(k, 0.0) for k in ("rate", "mean_prompt")}
        job = _Job("evolve", self.jobs, now, time.monotonic(), snapshot, self.incumbent, conditions)
        job.holdout = self._holdout(reasons, since)
        self.job = job
        self.on_event("trigger", {"time": now, "reasons": reasons, "job": job.number})
        self.queue.put(job)

    def _holdout(self, reasons: Sequence[str], since: float):
        """The stretch before a snapshot that starts at ``since``, when only the period triggered
        (no drift, no cluster event: it is another sample of the same workload), else None."""
        before = since - self.config.history * self.config.window_s
        if not self.config.holdout or list(reasons) != ["period"] or before < 0:
            return None
        return self._snapshot(before, since)

    def _snapshot(self, since: float, until: float):
        """What the candidates are scored on: the last windows, replayed up to ``horizon`` windows
        where the adapter can (``horizon_s``), since the winner will serve that long."""
        horizon_s = self.config.horizon * self.config.window_s
        with adapters_own(self.adapter, f"window_snapshot({since:.1f}, {until:.1f}, ...)"):
            if horizon_s > until - since and "horizon_s" in inspect.signature(self.adapter.window_snapshot).parameters:
                return self.adapter.window_snapshot(since, until, self.incumbent, horizon_s=horizon_s)
            return self.adapter.window_snapshot(since, until, self.incumbent)

    def _seeds(self, job: _Job) -> list[Program]:
        """The incumbent, earlier winners for the most similar conditions, then the baselines."""
        def distance(conditions):
            return sum(abs(conditions.get(k, 0.0) - v) / (abs(v) + 1e-9) for k, v in job.conditions.items())

        nearest = [p for _, p in sorted(self.winners, key=lambda cp: distance(cp[0]))]
        similar = list(dict.fromkeys(p for p in nearest if p.id != job.incumbent.id))[: self.config.similar]
        seeds = [job.incumbent, *similar, *self.baselines.values()]
        return [p for p in dict.fromkeys(seeds) if p.id not in self.refused or p.id == job.incumbent.id]

    def _evolve(self, job: _Job) -> None:
        latency_before = self.extra_latency()
        try:
            if job.kind in ("guard", "check"):
                programs = (job.candidate, job.incumbent) if job.kind == "guard" else (job.incumbent,)
                job.result = self.evaluator.evaluate([Task(p.id, p.source, job.snapshot) for p in programs])
                return
            if self.stopping.is_set():
                job.error = "serving ended first"
                return
            cfg = replace(self.evolution_config, seed=self.evolution_config.seed * 1000 + job.number,
                          held_out_snapshots=0, train_snapshots=1)
            seeds = self._seeds(job)
            evolution = Evolution(self.adapter, cfg, self.archive, operators=self.operators,
                                  adapter_spec=self.adapter_spec, adapter_options=self.adapter_options,
                                  extra_config={"parent": self.run_id, "trigger_time": job.started_live},
                                  seeds=seeds, snapshots=[job.snapshot], evaluator=self.evaluator,
                                  stop=self.stopping)
            result = evolution.run(run_id=f"{self.run_id}-e{job.number:03d}")
            candidates = list(dict.fromkeys([result.champion, *seeds]))  # seeds were scored there: cache hits
            scores = self.evaluator.evaluate([Task(p.id, p.source, job.snapshot) for p in [job.incumbent, *candidates]])
            contenders = [p for _, p in self.choice.contenders(job.incumbent, candidates, scores, job.snapshot.key)]
            if job.holdout is not None and contenders:  # only a contender can be offered: the rest need no holdout
                scores = {**scores, **self.evaluator.evaluate([Task(p.id, p.source, job.holdout)
                                                               for p in [job.incumbent, *contenders]])}
            job.result = (result, scores, candidates)
        except Exception as e:  # noqa: BLE001 - the evolution plane must never take serving down
            job.error = f"{type(e).__name__}: {e}"
        finally:
            job.wall_s = time.monotonic() - job.started_wall
            job.extra_s = max(0.0, self.extra_latency() - latency_before)

    def _conclude(self, job: _Job, now: float) -> None:
        if job.kind == "guard":
            return self._conclude_guard(job, now)
        elapsed = now - job.started_live
        if job.error or job.result is None:
            self._record(Deployment(now, "rejected", job.incumbent.id, f"evolution failed: {job.error}",
                                    evolution_s=elapsed))
            return
        result, scores, candidates = job.result
        self.evaluations += result.evaluated
        inc = scores.get((job.incumbent.id, job.snapshot.key))
        overfit = self.choice.overfit(job.incumbent, candidates, scores, job.holdout.key if job.holdout else None)
        chosen = self.choice.best(job.incumbent, [p for p in candidates if p.id not in overfit], scores,
                                  job.snapshot.key)
        champion = chosen or result.champion
        new = scores.get((champion.id, job.snapshot.key))
        name = self.objective.name
        inc_f = inc.metrics.get(name) if inc is not None and inc.ok else None
        new_f = new.metrics.get(name) if new is not None and new.ok else None
        detail = dict(incumbent_fitness=inc_f, champion_fitness=new_f, evolution_s=elapsed,
                      evaluations=result.evaluated)
        if champion.id == job.incumbent.id or new_f is None:
            self._record(Deployment(now, "rejected", champion.id, "the incumbent stays the best", **detail))
            return
        if champion.id in overfit:
            self._record(Deployment(now, "rejected", champion.id, f"{overfit[champion.id]} on the stretch before the "
                                    "snapshot (a periodic trigger: the workload had not changed)", **detail))
            return
        gain = self.objective.improvement(new_f, inc_f) if inc_f is not None else math.inf
        margin, disrupts = self.choice.required(inc, new)
        if gain < margin or gain <= 0:  # a tie is no win, even at --margin 0: a swap is a risk
            self._record(Deployment(now, "rejected", champion.id, f"gain {gain:+.2%} below the "
                                    f"{'re-plan ' if disrupts else ''}margin {margin:.0%}" if gain < margin else
                                    "no gain on the twin (a tie)", **detail))
            return
        if job.incumbent.id != self.live.id or champion.id in self.refused:
            why = "rolled back before" if champion.id in self.refused else "the live policy changed meanwhile"
            self._record(Deployment(now, "rejected", champion.id, why, **detail))
            return
        self.winners.append((job.conditions, champion))
        offered = self.choice.contenders(job.incumbent, [p for p in candidates if p.id not in overfit], scores,
                                         job.snapshot.key)
        smaller = "" if champion.id == max(offered, key=lambda option: option[0], default=(0, champion))[1].id else (
            f"; the smallest change within {self.config.margin:.0%} of the best "
            f"({self.choice.changes(job.incumbent, champion)} slot(s))")
        ahead = [p for p in candidates if p.id in overfit  # ahead of the champion on the snapshot
                 and (self.choice.gain(scores, p, champion, job.snapshot.key) or 0.0) > 0]
        held = f"; {len(ahead)} further ahead on the twin lost on the stretch before the snapshot" if ahead else ""
        recalled = f"; recalled: confirmed in {self.recalled[champion.id]}" if champion.id in self.recalled else ""
        self._deploy(champion, now, "deploy", f"{gain:+.1%} {name} on the twin{smaller}{held}{recalled}",
                     conditions=job.conditions, **detail)

    def _conclude_guard(self, job: _Job, now: float) -> None:
        if job.candidate.id != self.live.id:
            return
        scores = job.result or {}
        live = scores.get((job.candidate.id, job.snapshot.key))
        inc = scores.get((job.incumbent.id, job.snapshot.key))
        if live is None or inc is None or not inc.ok:  # no counterfactual: do not blame the policy, but say so
            failed = (f"the incumbent's twin replay: {inc.error}" if inc is not None and not inc.ok else
                      f"no twin score for the {'incumbent' if inc is None else 'live program'}")
            self.on_event("warning", {"message": f"the guard has no counterfactual for the window that ended at "
                                                 f"{job.started_live:.0f} s ({failed}); it counts as clean"})
            return self._verdict(*self.guard.clean(), now)
        if not live.ok:
            return self._verdict("rollback", f"{job.why}; it fails on the twin replay: {live.error}", now)
        name = self.guard.objective.name if self.guard.objective.name in inc.metrics else "mean_e2e"
        name = name if name in inc.metrics else self.objective.name  # replays finish every request
        worse = -self.guard.objective.improvement(live.metrics[name], inc.metrics[name])
        if worse > self.config.margin:
            return self._verdict("rollback", f"{job.why}; on the twin replay of that window the incumbent "
                                             f"does {worse:.0%} better", now)
        self._verdict(*self.guard.clean(), now)

    # -- deployment -----------------------------------------------------------------------
    def _deploy(self, program: Program, now: float, kind: str, reason: str, **detail) -> None:
        # the built-in baseline always ends the chain, even behind itself: it answers without a deadline
        incumbent = self.incumbent if kind == "deploy" and self.incumbent.id != program.id else None
        fallbacks = [p for p in (incumbent, self.fallback) if p is not None]
        with adapters_own(self.adapter, f"deploy({program.id[:8]}, ...)"):
            self.adapter.deploy(program, fallbacks)
        if kind == "deploy":
            self.previous = self.incumbent
            self.guard.watch(self._reference())
        self.live = program
        self.swapped = True
        self._record(Deployment(now, kind, program.id, reason, **detail))

    def _record(self, d: Deployment) -> None:
        self.deployments.append(d)
        program = next((p for p in [getattr(self, "live", None), self.incumbent, *self.baselines.values()]
                        if p is not None and p.id == d.program), None)
        if program is not None:
            self.archive.add_program(program)
        self.archive.add_deployment(self.run_id, d.time, d.kind, d.program, d.reason, asdict(d))
        self.on_event("deployment", {"deployment": d})
