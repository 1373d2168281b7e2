"""Offline evolution: the loop that breeds, checks, scores and archives programs.

Determinism and resume go together. Every generation reseeds the global ``random``
(which DEAP's selection and GP draw from) and the operators' rng from (seed,
generation, island), and a generation's survivors are written atomically when it
ends. A resumed run reloads the last completed generation and remakes the next one
exactly; children evaluated before the crash are found in the archive's evaluation
cache, so nothing finished is lost and nothing is scored twice.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
import math
import random
from collections import deque
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from deap import tools

from . import sandbox
from .adapters.base import AdapterError, adapter_code, checked_slots
from .archive import Archive
from .evaluate import Evaluator, Limits, Outcome, Task
from .metrics import Fitness, Objective, Snapshot, check_reported
from .llm.ledger import BudgetExhausted
from .operators import Context, Operator, OperatorError, offline
from .program import Program
from autopoiesis.search import Individual, fitness_class, make  # search/ installs as autopoiesis.search

HELD_OUT_OFFSET = 500


def new_run_id(adapter_name: str) -> str:
    return f"{adapter_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _limit_hint(errors: list[str], cfg: Config) -> str:
    """When every seed (the trusted baselines among them) failed on a worker limit, the limit is
    the likely cause: name the option to raise. Only the seeds' errors count: generation 0's
    variants of them may fail their own ways first (a bad plan). Near the memory cap a seed may
    time out instead (``evolve --memory-mb 1``: one baseline of ten did), so that counts too."""
    memory = sum(e.startswith("memory limit exceeded") for e in errors)
    timeouts = sum(e.startswith("timed out") for e in errors)
    if not errors or memory + timeouts < len(errors):
        return ""
    if memory == len(errors):
        return f": every seed ran out of memory, so --memory-mb {cfg.memory_mb} is likely too small"
    if memory:  # a program whose every allocation fails can spend its time on the failures
        return (f": every seed ran out of memory ({memory}) or of time ({timeouts}) near the memory cap, "
                f"so --memory-mb {cfg.memory_mb} is likely too small")
    return f": every seed timed out, so --timeout {cfg.timeout:g} is likely too short"


class EvolutionError(Exception):
    """The run cannot go on (e.g. no seed is valid); the message says why."""  # held-out snapshot seeds never overlap the training ones


class Stopped(EvolutionError):
    """The caller's ``stop`` event was set: the run ended between two children, marked interrupted."""


def require_whole(config: Any, name: str, low: int) -> None:
    """Raise ValueError unless ``config.name`` is an int >= low (a bool is not)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(config).__name__}.{name} must be a whole number >= {low}, got {value!r}")


def require_number(config: Any, name: str, low: float, *, above: bool = False, high: float = math.inf) -> None:
    """Raise ValueError unless ``config.name`` is a finite number >= low (> low with ``above``), <= high."""
    value = getattr(config, name)
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not (number and (value > low if above else value >= low) and value <= high):
        bound = f"{'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ValueError(f"{type(config).__name__}.{name} must be a number {bound}, got {value!r}")


@dataclass
class Config:
    """Everything that determines a run; stored with it so ``--resume`` needs nothing else."""

    population: int = 16
    generations: int = 10
    seed: int = 0
    objectives: tuple[str, ...] = ()  # "min:metric" / "max:metric"; empty: the adapter's first
    strategy: str = "generational"
    budget: int | None = None  # most programs to evaluate in the run
    train_snapshots: int = 3
    held_out_snapshots: int = 5
    workers: int = 1
    timeout: float = 10.0
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        """A caller's mistake is one ValueError naming the field, before anything runs (the CLI checks
        its flags the same way). Before, ``generations=-1`` failed at the end on "min() arg is an
        empty sequence", ``train_snapshots=0`` on an IndexError and ``population=0`` ran."""
        for name, low in (("population", 1), ("generations", 0), ("seed", 0), ("train_snapshots", 1),
                          ("held_out_snapshots", 0), ("workers", 1), ("memory_mb", 1)):
            require_whole(self, name, low)
        if self.budget is not None:
            require_whole(self, "budget", 1)
        require_number(self, "timeout", 0, above=True)
        if isinstance(self.objectives, str) or not all(isinstance(o, str) for o in self.objectives):
            raise ValueError(f"Config.objectives must be a tuple of strings such as ('min:total_time',), "
                             f"got {self.objectives!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "objectives" in values:
            values["objectives"] = tuple(values["objectives"])
        return cls(**values)


@dataclass
class Result:
    run_id: str
    champion: Program
    fitness: Fitness
    generations: int
    evaluated: int  # program evaluations this process ran (cache hits excluded)
    reused: int  # evaluations found in the archive instead
    programs: int  # distinct programs scored in the run, over all its sessions
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> metrics

    def summary(self) -> dict[str, Any]:
        objective = self.fitness.objectives[0]
        return {
            "run": self.run_id,
            "objective": str(objective),
            "champion": self.champion.id,
            "champion_operator": self.champion.operator,
            "fitness": dict(self.fitness.values),
            "held_out": self.held_out,
            "generations": self.generations,
            "programs": self.programs,
            "evaluations": self.evaluated,
            "reused": self.reused,
        }


class Evolution:
    """One run of offline evolution for an adapter; ``run()`` starts or resumes it."""

    def __init__(
        self,
        adapter: Any,
        config: Config | None = None,
        archive: Archive | None = None,
        operators: Sequence[tuple[Operator, float]] | None = None,
        strategy: Any = None,
        adapter_spec: str | None = None,
        adapter_options: Mapping[str, Any] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        seeds: Sequence[Program] | None = None,
        snapshots: Sequence[Snapshot] | None = None,
        evaluator: Evaluator | None = None,
        stop: threading.Event | None = None,
    ):
        """``seeds`` replace the adapter's baselines as generation 0; ``snapshots`` replace the
        seeded training snapshots (and there are no held-out ones), e.g. a live window to
        replay; ``evaluator`` is a pool to share (the caller closes it); ``stop``, once set,
        ends the run with ``Stopped`` before its next child is made (an online run that is
        over does not wait for an evolution whose result would come too late)."""
        self.adapter = adapter
        self.config = config or Config()
        self.archive = archive or Archive()
        self.slots = {slot.name: slot for slot in checked_slots(adapter)}
        self.operators = list(operators or offline(self.slots))
        self.strategy = strategy or make(self.config.strategy)
        self.adapter_spec = adapter_spec or type(adapter).__name__
        self.adapter_options = dict(adapter_options or {})
        self.extra_config = dict(extra_config or {})  # stored with the run (e.g. the LLM settings)
        self.on_event = on_event or (lambda kind, data: None)
        self.objectives = self._objectives()
        self.fitness_cls = fitness_class(self.objectives)
        self.failures: deque[str] = deque(maxlen=6)  # recent reasons children failed: feedback for LLM operators
        self.snapshot_summary = ""
        self.given_seeds = list(seeds) if seeds else None
        self.given_snapshots = list(snapshots) if snapshots else None
        self.given_evaluator = evaluator
        self.stop = stop

    def _objectives(self) -> tuple[Objective, ...]:
        if self.config.objectives:
            objectives = tuple(Objective.parse(text) for text in self.config.objectives)
            check_reported(objectives, self.adapter)
            return objectives
        if not getattr(self.adapter, "objectives", ()):
            raise ValueError(f"adapter '{self.adapter.name}' declares no objectives; pass one")
        return (self.adapter.objectives[0],)

    # -- the run ---------------------------------------------------------------------
    def run(self, resume: str | None = None, run_id: str | None = None) -> Result:
        """Start a run (``run_id``: its name, default generated) or continue ``resume``."""
        cfg = self.config
        if resume:
            run_id = resume
            last = self.archive.last_generation(run_id)
            first_gen = 0 if last is None else last + 1
            self.archive.set_status(run_id, "running")
        if self.given_snapshots:  # an online evolution's windows: its run is never resumed
            train, held_out = self.given_snapshots, []
        else:
            train, held_out = self._snapshots(resume)
            if not resume:
                self.archive.save_snapshots(train + held_out)  # before the run exists: a resumable run has them
        if not resume:
            run_id = run_id or new_run_id(self.adapter.name)
            stored = dict(cfg.to_dict(), train_keys=[s.key for s in train], held_out_keys=[s.key for s in held_out],
                          objective_list=[str(o) for o in self.objectives],
                          adapter_options=self.adapter_options,
                          headline=list(getattr(self.adapter, "headline", ()) or [o.name for o in self.adapter.objectives]),
                          directions={o.name: o.direction for o in (*self.adapter.objectives, *self.objectives)})
            self.archive.create_run(run_id, self.adapter_spec, {**stored, **self.extra_config})
            first_gen = 0
        self.run_id = run_id
        if train and hasattr(self.adapter, "summarize"):
            self.snapshot_summary = self.adapter.summarize(train[0])
        limits = Limits(timeout=cfg.timeout, memory_mb=cfg.memory_mb)
        self.on_event("start", {"run": run_id, "generations": cfg.generations, "from": first_gen})

        pool = (nullcontext(self.given_evaluator) if self.given_evaluator
                else Evaluator(self.adapter, cfg.workers, limits,
                                 cache=self.archive.cache_for(run_id, adapter_code(self.adapter))))
        with pool as evaluator:
            self.evaluator = evaluator
            hits, executed = evaluator.cache_hits, evaluator.executed
            self.seeds = self.given_seeds or list(self.adapter.baselines().values())
            earlier = self.archive.births(run_id, before_generation=first_gen)
            seen = {b["program"] for b in earlier}
            scored = sum(1 for b in earlier if b["status"] != "rejected")
            islands: list[list[Any]] = []
            if first_gen > 0:
                islands = self._load_population(run_id, first_gen - 1, train)
                if not any(islands):  # it failed there: no seed was valid
                    self.archive.set_status(run_id, "failed")
                    raise EvolutionError(f"run {run_id} has nothing to go on from: its generation {first_gen - 1} "
                                         "left no valid program (see autopoiesis report); start a new run")
            for generation in range(first_gen, cfg.generations + 1):
                if cfg.budget is not None and scored >= cfg.budget and generation > 0:
                    break
                try:
                    self._check_stop(generation)
                    islands, scored = self._generation(run_id, generation, islands, seen, scored, train)
                except BudgetExhausted as e:
                    self.archive.set_status(run_id, "budget spent")
                    raise EvolutionError(f"{e}; the run stopped before generation {generation} "
                                         f"and can be resumed with a larger budget (--resume {run_id})") from None
                except Stopped:
                    self.archive.set_status(run_id, "interrupted")
                    raise
                self.on_event("generation", {"generation": generation, **self.archive.generation_stats(run_id)[-1]})
            last = self.archive.last_generation(run_id) or 0
            population = [ind for island in islands for ind in island]
            best = self.strategy.best(population)
            held = self._held_out(run_id, best, train, held_out)
            self.archive.set_status(run_id, "done")
            reused = evaluator.cache_hits - hits
            executed = evaluator.executed - executed
        return Result(run_id, best.program, best.scores, last, executed, reused, scored, held)

    def _check_stop(self, generation: int) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"stopped in generation {generation}")

    def _snapshots(self, resume: str | None) -> tuple[list[Snapshot], list[Snapshot]]:
        """Train and held-out snapshots: made from the seed, or for a resumed run the ones it began with."""
        cfg = self.config
        if resume:
            stored = self.archive.run(resume)["config"]
            train_keys, held_keys = stored.get("train_keys", []), stored.get("held_out_keys", [])
            kept = self.archive.snapshots(train_keys + held_keys)
            if kept is not None:
                return kept[:len(train_keys)], kept[len(train_keys):]
        train = [self._snapshot(cfg.seed * 1000 + i) for i in range(cfg.train_snapshots)]
        held_out = [self._snapshot(cfg.seed * 1000 + HELD_OUT_OFFSET + i) for i in range(cfg.held_out_snapshots)]
        if resume and [s.key for s in train + held_out] != train_keys + held_keys:
            self.on_event("warning", {"message": f"run {resume} kept no copy of its snapshots and '{self.adapter.name}' "
                                                 "made different ones now; the resumed generations are scored on "
                                                 "the new ones"})
        return train, held_out

    def _snapshot(self, seed: int) -> Snapshot:
        """The adapter's snapshot for ``seed``; its failure is the adapter's, and says so."""
        try:
            snapshot = self.adapter.snapshot(seed)
        except AdapterError:  # already said as the adapter's
            raise
        except Exception as e:
            raise EvolutionError(f"adapter {self.adapter.name}: snapshot({seed}) failed: {type(e).__name__}: {e} "
                                 "(AUTOPOIESIS_DEBUG=1 shows the traceback)") from e
        if not isinstance(snapshot, Snapshot):
            raise EvolutionError(f"adapter {self.adapter.name}: snapshot({seed}) returned {repr(snapshot)[:80]}, "
                                 "not a Snapshot (autopoiesis.Snapshot(adapter_name, params))")
        return snapshot

    def _generation(self, run_id, generation, islands, seen, scored, train):
        cfg, n_islands = self.config, max(1, self.strategy.islands)
        size = max(2, cfg.population // n_islands)
        budget_left = None if cfg.budget is None else max(0, cfg.budget - scored)
        children_per_island: list[list[Program]] = []
        rejected: list[tuple[Program, str, str | None]] = []
        duplicates = 0
        for island in range(n_islands):
            random.seed(f"{cfg.seed}:{generation}:{island}")
            context = Context(self.slots, random.Random(f"ops:{cfg.seed}:{generation}:{island}"), generation,
                              extra={"objectives": self.objectives, "snapshot_summary": self.snapshot_summary,
                                     "failures": list(self.failures)})
            if islands:
                ranked = sorted(islands[island], key=lambda i: i.fitness.wvalues, reverse=True)
                context.extra["top"] = [(i.program, i.scores) for i in ranked[:3]]
            if generation == 0:  # every seed, then variations of them up to the size
                wanted, parents_of = size, None
                seeds = list(self.seeds) if island == 0 else []
            else:
                wanted, parents_of, seeds = self.strategy.offspring_count(size), islands[island], []
            children: list[Program] = []
            attempts = 0
            while seeds or (len(children) < wanted and attempts < 10 * wanted):
                if budget_left is not None and sum(map(len, children_per_island)) + len(children) >= budget_left:
                    break
                if seeds:
                    child = seeds.pop(0)
                else:
                    attempts += 1
                    self._check_stop(generation)  # an LLM operator's child can take many seconds
                    child = self._vary(parents_of, context)
                if child is None:
                    continue
                if child.id in seen:
                    duplicates += 1
                    continue
                seen.add(child.id)
                try:
                    sandbox.check(child.source, self.slots.values())
                except sandbox.Rejected as e:
                    rejected.append((child, "rejected", str(e)))
                    self.failures.append(f"rejected by the sandbox: {e}")
                    continue
                children.append(child)
            children_per_island.append(children)

        births = [(c, "pending", None) for cs in children_per_island for c in cs] + rejected
        self.archive.add_births(run_id, births)
        scores, errors = self._score([c for cs in children_per_island for c in cs], train)
        for error in list(errors.values())[-3:]:
            self.failures.append(f"failed when run: {error}")
        self.archive.set_birth_status(
            run_id, [(pid, "failed", err) for pid, err in errors.items()] + [(pid, "valid", None) for pid in scores]
        )
        scored += sum(map(len, children_per_island))

        new_islands = []
        for island in range(n_islands):
            random.seed(f"survive:{cfg.seed}:{generation}:{island}")
            offspring = [self._individual(c, scores[c.id]) for c in children_per_island[island] if c.id in scores]
            current = islands[island] if islands else []
            new_islands.append(self.strategy.survive(current, offspring, size))
        random.seed(f"migrate:{cfg.seed}:{generation}")
        self.strategy.migrate(new_islands, generation)

        population = [ind for island in new_islands for ind in island]
        stats = self._stats(population)
        stats.update(
            children=sum(map(len, children_per_island)) + len(rejected),
            valid=len(scores), failed=len(errors), rejected=len(rejected), duplicates=duplicates,
            champion=self.strategy.best(population).program.id if population else None,
        )
        self.archive.save_generation(run_id, generation, [[i.program.id for i in isl] for isl in new_islands], stats)
        if not population:
            self.archive.set_status(run_id, "failed")
            reasons = "; ".join(f"{err}" for err in list(errors.values())[:1] + [r[2] for r in rejected[:1]])
            seed_errors = [errors[s.id] for s in self.seeds if s.id in errors]  # variants fail their own ways
            raise EvolutionError(f"no seed program is valid ({reasons or 'the adapter has no baselines'})"
                                 + _limit_hint(seed_errors, cfg))
        return new_islands, scored

    def _vary(self, parents_of, context) -> Program | None:
        """One child from one operator, or None if the operator could not make one."""
        operators = self.operators
        if parents_of is None:  # generation 0: only unary operators, applied to the seeds
            operators = [(op, w) for op, w in operators if op.arity == 1]
        op = context.rng.choices([o for o, _ in operators], weights=[w for _, w in operators])[0]
        if parents_of is None:
            parents = [context.rng.choice(self.seeds) for _ in range(op.arity)]
        else:
            parents = [ind.program for ind in self.strategy.select(parents_of, op.arity)]
            context.extra["fitness"] = {ind.program.id: ind.scores for ind in parents_of}
        try:
            return op(parents, context)
        except OperatorError:
            return None

    def _score(self, programs: list[Program], snapshots: list[Snapshot]):
        tasks = [Task(p.id, p.source, s) for p in programs for s in snapshots]
        outcomes: dict[tuple[str, str], Outcome] = {}
        for outcome in self.evaluator.run(tasks):
            outcomes[outcome.key] = outcome
            self.on_event("evaluated", {"program": outcome.program_id, "ok": outcome.ok, "cached": outcome.cached})
        scores, errors = {}, {}
        for program in programs:
            results = [outcomes[(program.id, s.key)] for s in snapshots]
            failed = next((r for r in results if not r.ok), None)
            if failed is not None:
                errors[program.id] = failed.error
                continue
            try:
                scores[program.id] = Fitness.mean([r.metrics for r in results], self.objectives)
            except KeyError as e:
                errors[program.id] = e.args[0]  # str() of a KeyError would quote it
        return scores, errors

    def _individual(self, program: Program, scores: Fitness):
        return Individual(program, scores, self.fitness_cls)

    def _load_population(self, run_id, generation, train):
        islands = []
        for ids in self.archive.population(run_id, generation):
            programs = [self.archive.program(pid, run_id) for pid in ids]
            scores, errors = self._score(programs, train)
            islands.append([self._individual(p, scores[p.id]) for p in programs if p.id in scores])
        return islands

    def _stats(self, population) -> dict[str, Any]:
        stats = tools.Statistics(key=lambda ind: ind.scores.scalar)
        stats.register("best", min if self.objectives[0].direction == "min" else max)
        stats.register("median", statistics.median)
        stats.register("worst", max if self.objectives[0].direction == "min" else min)
        return stats.compile(population) if population else {}

    def _held_out(self, run_id, best, train, held_out) -> dict[str, dict[str, float]]:
        """Champion and every baseline, scored on snapshots evolution never saw."""
        entries = [("champion", "champion", best.program)] + [("baseline", s.label(), s) for s in self.seeds]
        programs = list({p.id: p for _, _, p in entries}.values())
        train_scores, _ = self._score(programs, train)
        held_scores, held_errors = self._score(programs, held_out) if held_out else ({}, {})
        out = {}
        for kind, name, program in entries:
            train_fit = train_scores.get(program.id)
            held_fit = held_scores.get(program.id)
            self.archive.save_result(
                run_id, kind, name, program.id,
                dict(train_fit.values) if train_fit else None,
                dict(held_fit.values) if held_fit else None,
                held_errors.get(program.id),
            )
            if held_fit:
                out[name] = dict(held_fit.values)
        return out
