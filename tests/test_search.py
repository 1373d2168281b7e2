import re

import pytest

from autopoiesis import Archive, Config, Evolution, Objective
from autopoiesis.search import STRATEGIES


def run(strategy, adapter, **overrides):
    config = Config(population=12, generations=4, seed=3, strategy=strategy, workers=2,
                    train_snapshots=2, held_out_snapshots=2, **overrides)
    archive = Archive()
    result = Evolution(adapter, config, archive).run()
    return result, archive


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_improves_on_fcfs(strategy, queue_adapter):
    objectives = ("min:mean_completion_time", "min:max_completion_time") if strategy == "nsga2" else ()
    result, archive = run(strategy, queue_adapter, objectives=objectives)
    fcfs = result.held_out["fcfs"]["mean_completion_time"]
    assert result.held_out["champion"]["mean_completion_time"] < 0.8 * fcfs
    stats = archive.generation_stats(result.run_id)
    assert [s["generation"] for s in stats] == list(range(5))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_program_is_evaluated_twice(strategy, queue_adapter):
    result, archive = run(strategy, queue_adapter)
    births = archive.births(result.run_id)
    ids = [b["program"] for b in births]
    assert len(ids) == len(set(ids))
    rows = archive.db.execute("SELECT program, snapshot, COUNT(*) FROM evaluations GROUP BY program, snapshot").fetchall()
    assert all(count == 1 for _, _, count in rows)
    # every task the evaluator ran was a distinct (program, snapshot) pair
    assert result.evaluated == archive.evaluation_count(result.run_id)


def test_nsga2_population_is_spread_along_the_front(queue_adapter):
    result, archive = run("nsga2", queue_adapter,
                          objectives=("min:mean_completion_time", "min:max_completion_time"))
    last = archive.last_generation(result.run_id)
    ids = archive.population(result.run_id, last)[0]
    keys = [s.key for s in [queue_adapter.snapshot(3000 + i) for i in range(2)]]
    points = []
    for pid in ids:
        values = [archive.get((pid, k)).metrics for k in keys]
        points.append(tuple(sum(v[m] for v in values) for m in ("mean_completion_time", "max_completion_time")))
    assert len(set(points)) > 1  # not collapsed onto one objective


def test_the_report_shows_the_pareto_front_of_a_run_with_two_objectives(queue_adapter):
    """``pareto_front``: every program of the last generation it leaves out is beaten on both
    objectives by one it shows, none it shows is beaten by another, and the champion is the
    front's best on the first objective (checked here point by point, not with DEAP)."""
    from autopoiesis.report import pareto_front

    result, archive = run("nsga2", queue_adapter,
                          objectives=("min:mean_completion_time", "min:max_completion_time"))
    front = pareto_front(archive, archive.run(result.run_id))
    last = archive.last_generation(result.run_id)
    keys = archive.run(result.run_id)["config"]["train_keys"]
    points = {}
    for pid in {pid for island in archive.population(result.run_id, last) for pid in island}:
        values = [archive.get((pid, k)).metrics for k in keys]
        points[pid] = tuple(sum(v[m] for v in values) / len(values) for m in ("mean_completion_time",
                                                                              "max_completion_time"))

    def beats(a, b):
        return all(x <= y for x, y in zip(a, b)) and a != b

    shown = {entry["program"] for entry in front}
    assert shown and all(not beats(points[o], points[p]) for p in shown for o in points)
    assert all(any(beats(points[f], points[p]) for f in shown) or points[p] in {points[f] for f in shown}
               for p in set(points) - shown)
    assert front[0]["program"] == result.champion.id
    assert front[0]["values"]["mean_completion_time"] == pytest.approx(points[result.champion.id][0])
    single, single_archive = run("generational", queue_adapter)
    assert pareto_front(single_archive, single_archive.run(single.run_id)) == []  # one objective: no front


def test_a_tie_on_the_first_objective_goes_to_the_better_on_the_next():
    """So the champion of a run with several objectives is never one the front beats (the
    worse program's id sorts first: before, the id broke the tie)."""
    from autopoiesis import Program
    from autopoiesis.metrics import Fitness
    from autopoiesis.search import Individual, fitness_class, make

    objectives = (Objective("mean", "min"), Objective("slo", "max"))
    cls = fitness_class(objectives)
    worse, better = (Individual(Program(f"def priority(job, now):\n    return {k}\n"),
                                Fitness({"mean": 3.0, "slo": slo}, objectives), cls) for k, slo in ((1, 0.5), (0, 0.9)))
    for name in STRATEGIES:
        assert make(name).best([worse, better]) is better and make(name).best([better, worse]) is better


def test_a_tie_on_every_objective_goes_to_the_smaller_program():
    """Programs that order jobs alike score alike; the champion is the one that reads simplest
    (the larger one's id sorts first: by id alone it would win)."""
    from autopoiesis import Program
    from autopoiesis.metrics import Fitness
    from autopoiesis.search import Individual, fitness_class, make

    objectives = (Objective("mean", "min"),)
    cls = fitness_class(objectives)
    larger, smaller = (Individual(Program(f"def priority(job, now):\n    return {body}\n"), Fitness({"mean": 3.0},
                                  objectives), cls) for body in ("job.size * 2.5", "job.size"))
    assert larger.program.id < smaller.program.id
    for name in STRATEGIES:
        assert make(name).best([larger, smaller]) is smaller and make(name).best([smaller, larger]) is smaller


def test_budget_caps_programs_scored(queue_adapter):
    result, _ = run("generational", queue_adapter, budget=20)
    assert result.programs <= 20


def test_same_seed_same_run(queue_adapter):
    a, _ = run("islands", queue_adapter)
    b, _ = run("islands", queue_adapter)
    assert a.champion.source == b.champion.source
    assert a.fitness.values == b.fitness.values


def test_an_objective_the_adapter_does_not_report_is_refused_at_construction(tmp_path):
    from autopoiesis.adapters.simulator import SimulatorAdapter
    from autopoiesis.online import Controller

    adapter = SimulatorAdapter("stationary")
    for build in (lambda c: Evolution(adapter, c, Archive(tmp_path / "a.db")),
                  lambda c: Controller(adapter, evolution=c, archive=Archive(tmp_path / "b.db"))):
        with pytest.raises(ValueError, match="reports no metric 'p99_ttfb' \\(it reports: requests, total_time"):
            build(Config(objectives=("min:p99_ttfb",)))
        assert build(Config(objectives=("max:slo_attainment",)))  # one it reports


def test_objective_parsing():
    assert Objective.parse("max:throughput") == Objective("throughput", "max")
    assert Objective.parse("latency") == Objective("latency", "min")
    with pytest.raises(ValueError):
        Objective.parse("up:latency")


@pytest.mark.parametrize("fields, says", [
    ({"population": 0}, "Config.population must be a whole number >= 1, got 0"),  # ran before
    ({"generations": -1}, "Config.generations must be a whole number >= 0, got -1"),  # min() of nothing at the end
    ({"train_snapshots": 0}, "Config.train_snapshots must be a whole number >= 1, got 0"),  # an IndexError
    ({"population": "8"}, "Config.population must be a whole number >= 1, got '8'"),  # a TypeError
    ({"workers": True}, "Config.workers must be a whole number >= 1, got True"),
    ({"seed": -1}, "Config.seed must be a whole number >= 0, got -1"),  # numpy: "expected non-negative integer"
    ({"budget": 0}, "Config.budget must be a whole number >= 1, got 0"),
    ({"timeout": float("nan")}, "Config.timeout must be a number > 0, got nan"),
    ({"objectives": "min:total_time"}, "Config.objectives must be a tuple of strings"),
])
def test_a_config_mistake_is_named_before_anything_runs(fields, says):
    with pytest.raises(ValueError) as raised:
        Config(**fields)
    assert str(raised.value).startswith(says)


def test_an_online_config_mistake_is_named_before_anything_runs():
    from autopoiesis.online import OnlineConfig

    for fields, says in (({"window_s": 0}, "OnlineConfig.window_s must be a number > 0, got 0"),
                         ({"history": 0}, "OnlineConfig.history must be a whole number >= 1, got 0"),
                         ({"max_fallback_rate": 1.5}, "OnlineConfig.max_fallback_rate must be a number >= 0 and <= 1"),
                         ({"evolution_cost_s": -1.0}, "OnlineConfig.evolution_cost_s must be a number >= 0"),
                         ({"max_windows": 0}, "OnlineConfig.max_windows must be a whole number >= 1"),
                         ({"drift_signals": "rate"}, "OnlineConfig.drift_signals must be a tuple of signal names")):
        with pytest.raises(ValueError, match=re.escape(says)):
            OnlineConfig(**fields)
    assert OnlineConfig.from_dict(OnlineConfig(period=0, step_s=0, evolution_cost_s=0.0).to_dict()).period == 0
