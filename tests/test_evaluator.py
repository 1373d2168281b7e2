import contextlib
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from autopoiesis import Archive, ArchiveError, Config, Evaluator, Evolution, Limits, Program, Task
from autopoiesis.evolution import EvolutionError
from autopoiesis.operators import Operator
from conftest import ROOT, single_queue

SJF = Program(single_queue.SJF)
LOOP = Program("def priority(job, now):\n    while True:\n        pass\n")


def tasks(adapter, programs, seeds=(0, 1)):
    return [Task(p.id, p.source, adapter.snapshot(s)) for p in programs for s in seeds]


def test_results_do_not_depend_on_worker_count(queue_adapter):
    programs = [Program(single_queue.FCFS), SJF]
    with Evaluator(queue_adapter, workers=1) as one, Evaluator(queue_adapter, workers=2) as two:
        a = one.evaluate(tasks(queue_adapter, programs))
        b = two.evaluate(tasks(queue_adapter, programs))
    assert {k: v.metrics for k, v in a.items()} == {k: v.metrics for k, v in b.items()}
    assert all(o.ok for o in a.values())


def test_cache_hit_skips_the_work(queue_adapter):
    with Evaluator(queue_adapter, workers=1) as evaluator:
        first = list(evaluator.run(tasks(queue_adapter, [SJF])))
        second = list(evaluator.run(tasks(queue_adapter, [SJF])))
    assert not any(o.cached for o in first) and all(o.cached for o in second)
    assert evaluator.executed == 2 and evaluator.cache_hits == 2


def test_timeout_replaces_the_worker_and_work_continues(queue_adapter):
    with Evaluator(queue_adapter, workers=1, limits=Limits(timeout=1.0)) as evaluator:
        out = evaluator.evaluate(tasks(queue_adapter, [LOOP, SJF], seeds=(0,)))
        assert evaluator.replaced == 1
        assert evaluator.healthy()
    snapshot = queue_adapter.snapshot(0).key
    assert "timed out" in out[(LOOP.id, snapshot)].error
    assert out[(SJF.id, snapshot)].ok


def test_a_worker_leaves_its_ending_to_the_evaluator(queue_adapter):
    """Ctrl-C, a service manager's stop and a closed terminal signal a worker with the evolution
    process; it ignores them, so it is not scored as a crash while the process stops itself."""
    import signal

    from processes import ended

    with Evaluator(queue_adapter, workers=1) as evaluator:
        assert all(o.ok for o in evaluator.evaluate(tasks(queue_adapter, [SJF], seeds=(0,))).values())  # it is up
        pid = evaluator._pool[0].process.pid
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(pid, sig)
        time.sleep(0.2)
        assert all(o.ok for o in evaluator.evaluate(tasks(queue_adapter, [SJF], seeds=(1,))).values())
        assert [w.process.pid for w in evaluator._pool] == [pid]  # the same worker did the work
    assert ended(pid)


# one C call of half an hour (10**5 sums of a million items): no bytecode between, so only the kernel stops it
C_LOOP = Program("def priority(job, now):\n    return float(max([[0] * 10 ** 6] * 10 ** 5)[0])\n")


def test_the_deadline_is_cpu_time_and_stops_a_loop_inside_c(queue_adapter):
    """The kernel ends the worker after `timeout` CPU seconds, even inside one long C call."""
    with Evaluator(queue_adapter, workers=1, limits=Limits(timeout=1.0)) as evaluator:
        (outcome,) = evaluator.run(tasks(queue_adapter, [C_LOOP], seeds=(0,)))
    assert outcome.error == "timed out after 1 s of CPU time"
    assert outcome.seconds < 10


def test_a_busy_machine_does_not_time_out_a_program():
    """Three processes spin on the worker's core: SJF gets about a quarter of it, takes about
    four times as long in real time, and still passes a timeout shorter than that (a wall-clock
    deadline failed it). Pinned to one core, so the test means the same on any machine."""
    core = min(os.sched_getaffinity(0))
    adapter = single_queue.SingleQueueAdapter(jobs=100_000)  # about half a second of CPU
    with _pinned(core), Evaluator(adapter, workers=1) as alone:
        (quiet,) = alone.run(tasks(adapter, [SJF], seeds=(0,)))
    timeout = max(0.5, 1.5 * quiet.seconds)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        for p in spinners:
            os.sched_setaffinity(p.pid, {core})
        with _pinned(core), Evaluator(adapter, workers=1, limits=Limits(timeout=timeout)) as busy:
            (loaded,) = busy.run(tasks(adapter, [SJF], seeds=(0,)))
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert loaded.ok, loaded.error
    assert loaded.seconds > timeout  # it did take longer than the timeout, on the wall clock
    assert loaded.metrics == quiet.metrics


@contextlib.contextmanager
def _pinned(core):
    """Pin this process (and so the workers it forks) to one core for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_a_worker_that_waits_meets_the_wall_clock_backstop():
    """A user adapter blocked on I/O computes nothing: the far real-time deadline ends it."""
    adapter = SleepyAdapter(jobs=20)
    with Evaluator(adapter, workers=1, limits=Limits(timeout=1.0, wall_seconds=2.0)) as evaluator:
        (outcome,) = evaluator.run(tasks(adapter, [SJF], seeds=(0,)))
        assert evaluator.replaced == 1
    assert outcome.error.startswith("timed out after 2 s of wall-clock time, without using its 1 s of CPU time")


class SleepyAdapter(single_queue.SingleQueueAdapter):
    def evaluate(self, policy, snapshot):
        time.sleep(60)  # a user adapter's replay on a server that never answers


class LambdaSnapshots(single_queue.SingleQueueAdapter):
    """A user adapter whose snapshots hold a function, and whose evaluate consumes what it is given."""

    def snapshot(self, seed):
        return single_queue.Snapshot(self.name, {"seed": seed, "jobs": lambda: self.jobs, "load": self.load})

    def evaluate(self, policy, snapshot):
        params = snapshot.params
        jobs = single_queue.make_jobs(params.pop("seed"), params.pop("jobs")(), params["load"])
        mean, worst = single_queue.mean_completion_time(policy.priority, jobs)
        return {"mean_completion_time": mean, "max_completion_time": worst}


def test_snapshots_the_c_pickler_cannot_take_still_reach_the_workers():
    """Snapshots are pickled once per run; one holding a lambda goes by dill, and each task gets its own copy."""
    adapter = LambdaSnapshots(jobs=60)
    programs = [Program(single_queue.FCFS), SJF]
    with Evaluator(adapter, workers=1) as evaluator:
        out = evaluator.evaluate(tasks(adapter, programs))  # two programs on each snapshot, one worker
    assert len(out) == 4 and all(o.ok for o in out.values()), [o.error for o in out.values()]
    plain = single_queue.SingleQueueAdapter(jobs=60)
    with Evaluator(plain, workers=1) as evaluator:
        expected = evaluator.evaluate(tasks(plain, programs))
    assert sorted(o.metrics["mean_completion_time"] for o in out.values()) == sorted(
        o.metrics["mean_completion_time"] for o in expected.values())


def test_archive_is_a_persistent_cache(tmp_path, queue_adapter):
    path = tmp_path / "a.db"
    archive = Archive(path)
    with Evaluator(queue_adapter, cache=archive.cache_for("r1")) as evaluator:
        evaluator.evaluate(tasks(queue_adapter, [SJF]))
    archive.close()
    reopened = Archive(path)
    with Evaluator(queue_adapter, cache=reopened.cache_for("r2")) as evaluator:
        evaluator.evaluate(tasks(queue_adapter, [SJF]))
        assert evaluator.executed == 0 and evaluator.cache_hits == 2
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_failure_is_reused_by_its_own_run_and_one_on_a_limit_by_its_own_evaluator(tmp_path):
    """A run that failed every program on a limit too small (the error names the option to
    raise) must not hand those failures to the next run, with the limit raised, from the
    archive. Nor does any failure go to another run (it was most often the adapter's mistake,
    fixed since); within its run a failure is reused (a resumed run repeats nothing), and one
    on a limit within the evaluator that met it."""
    adapter = single_queue.SingleQueueAdapter(jobs=100_000)  # about half a second of CPU
    raising = Program("def priority(job, now):\n    return 1 / 0\n")
    archive = Archive(tmp_path / "a.db")
    with Evaluator(adapter, limits=Limits(timeout=0.05), cache=archive.cache_for("tight")) as tight:
        first = tight.evaluate(tasks(adapter, [SJF, raising], seeds=(0,)))
        again = tight.evaluate(tasks(adapter, [SJF, raising], seeds=(0,)))
        assert tight.executed == 2 and tight.cache_hits == 2
    key = (SJF.id, adapter.snapshot(0).key)
    assert first[key].error == again[key].error == "timed out after 0.05 s of CPU time"
    with Evaluator(adapter, cache=archive.cache_for("roomy")) as roomy:
        second = roomy.evaluate(tasks(adapter, [SJF, raising], seeds=(0,)))
        assert roomy.executed == 2 and roomy.cache_hits == 0  # tight's failures are found again
    assert second[key].ok and archive.get(key).ok  # the recorded failure was replaced
    assert archive.evaluation_count("roomy") == 2
    with Evaluator(adapter, cache=archive.cache_for("roomy")) as resumed:
        third = resumed.evaluate(tasks(adapter, [SJF, raising], seeds=(0,)))
        assert resumed.executed == 0 and resumed.cache_hits == 2  # its own success and failure
    assert "ZeroDivisionError" in third[(raising.id, adapter.snapshot(0).key)].error


def test_an_evaluation_is_reused_only_under_the_adapter_code_that_made_it(tmp_path):
    """The archive answers an evaluation from the cache only if the adapter's code is what it
    was (``adapter_code``): an author who edits ``evaluate`` gets the new scores, not the
    old ones; an archive from before the code was recorded is read, its evaluations run again."""
    from autopoiesis.adapters.base import adapter_code, load_adapter

    source = (ROOT / "examples" / "single_queue.py").read_text()
    path = tmp_path / "mine.py"
    path.write_text(source)
    first = load_adapter(f"{path}:SingleQueueAdapter", {})
    code = adapter_code(first)  # as a run takes it, when it starts
    archive = Archive(tmp_path / "a.db")
    with Evaluator(first, cache=archive.cache_for("r1", code)) as evaluator:
        before = evaluator.evaluate(tasks(first, [SJF], seeds=(0,)))
    with Evaluator(first, cache=archive.cache_for("r2", code)) as evaluator:
        evaluator.evaluate(tasks(first, [SJF], seeds=(0,)))
        assert evaluator.executed == 0 and evaluator.cache_hits == 1  # same code: reused
    doubled = source.replace("def evaluate(self, policy, snapshot):", "def evaluate(self, policy, snapshot):\n"
                             "        return {k: 2 * v for k, v in self._evaluate(policy, snapshot).items()}\n\n"
                             "    def _evaluate(self, policy, snapshot):")
    assert doubled != source
    path.write_text(doubled)
    edited = load_adapter(f"{path}:SingleQueueAdapter", {})
    assert adapter_code(edited) != code and edited.snapshot(0).key == first.snapshot(0).key
    with Evaluator(edited, cache=archive.cache_for("r3", adapter_code(edited))) as evaluator:
        after = evaluator.evaluate(tasks(edited, [SJF], seeds=(0,)))
        assert evaluator.executed == 1
    (key,) = before
    assert after[key].metrics["mean_completion_time"] == 2 * before[key].metrics["mean_completion_time"]
    archive.close()

    old = sqlite3.connect(tmp_path / "old.db")  # the evaluations table as archives had it
    old.executescript("CREATE TABLE evaluations (program TEXT NOT NULL, snapshot TEXT NOT NULL, metrics TEXT, "
                      "error TEXT, seconds REAL NOT NULL, run TEXT, created REAL NOT NULL, "
                      "PRIMARY KEY (program, snapshot));")
    old.execute("INSERT INTO evaluations VALUES (?, ?, ?, NULL, 0.1, 'r0', 0)", (*key, '{"mean_completion_time": 1}'))
    old.commit()
    old.close()
    reopened = Archive(tmp_path / "old.db")
    assert reopened.get(key).metrics == {"mean_completion_time": 1}
    with Evaluator(edited, cache=reopened.cache_for("r4", adapter_code(edited))) as evaluator:
        evaluator.evaluate(tasks(edited, [SJF], seeds=(0,)))
        assert evaluator.executed == 1
    assert reopened.get(key).metrics == after[key].metrics
    reopened.close()


def test_the_adapter_code_follows_its_own_imports_and_stops_at_installed_ones(tmp_path, monkeypatch):
    """The fingerprint covers the modules of the user's own that an adapter imports, however
    it imports them (relatively, inside a function, through another of its modules), and
    leaves installed packages to their versions."""
    from autopoiesis.adapters.base import adapter_code, load_adapter

    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(
        "import numpy\nfrom examples_queue import SingleQueueAdapter\nfrom .costs import scale\n\n\n"
        "class Mine(SingleQueueAdapter):\n    name = 'mine'\n\n    def late(self):\n"
        "        from mypkg import lazy\n        return lazy\n")
    (package / "costs.py").write_text("from . import deeper\n\nscale = 1.0\n")
    (package / "deeper.py").write_text("X = 1\n")
    (package / "lazy.py").write_text("Y = 1\n")
    (tmp_path / "examples_queue.py").write_text((ROOT / "examples" / "single_queue.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = load_adapter("mypkg.adapter:Mine", {})
    codes = {adapter_code(adapter)}
    for name in ("costs.py", "deeper.py", "lazy.py", "../examples_queue.py"):
        path = package / name
        path.write_text(path.read_text() + "\n# edited\n")
        codes.add(adapter_code(adapter))
    assert len(codes) == 5  # each edit changed it
    (package / "unused.py").write_text("Z = 1\n")  # in the package, imported by nothing
    assert adapter_code(adapter) in codes
    from autopoiesis.adapters.base import _with_own_imports
    files = _with_own_imports({(package / "adapter.py").resolve(): "mypkg"})
    assert {p.name for p in files} == {"adapter.py", "__init__.py", "costs.py", "deeper.py", "lazy.py", "examples_queue.py"}


class MeasuringQueue(single_queue.SingleQueueAdapter):
    """Test double for an adapter whose snapshots hold a measurement of the machine (the engine's
    timed step costs): each instance measures a different load, as a new process would."""

    made = 0

    def __init__(self, tagged=False, **options):
        super().__init__(**options)
        MeasuringQueue.made += 1
        self.load, self.tagged = 0.8 + 0.05 * MeasuringQueue.made, tagged

    def snapshot(self, seed):
        snapshot = super().snapshot(seed)
        if self.tagged:  # params JSON cannot hold: the archive cannot keep this snapshot
            return type(snapshot)(self.name, {**snapshot.params, "tag": frozenset({seed})}, label=snapshot.label)
        return snapshot


def _interrupted(tmp_path, adapter, config):
    archive = Archive(tmp_path / "resume.db")
    first = Evolution(adapter, Config(**{**config.to_dict(), "generations": 1}), archive).run()
    archive.set_status(first.run_id, "interrupted")
    return archive, first.run_id


def test_a_resumed_run_scores_on_the_snapshots_it_began_with(tmp_path):
    """A fresh adapter measures differently; the resumed run still scores on the first snapshots."""
    config = Config(population=10, generations=4, seed=7, workers=2, held_out_snapshots=1)
    adapter = MeasuringQueue(jobs=120)
    reference = Evolution(adapter, config, Archive(tmp_path / "ref.db")).run()
    archive, run_id = _interrupted(tmp_path, adapter, config)
    stored = archive.run(run_id)["config"]
    events = []
    resumed = Evolution(MeasuringQueue(jobs=120), config, archive,
                        on_event=lambda kind, data: events.append(kind)).run(resume=run_id)
    scored_on = {row[0] for row in archive.db.execute("SELECT DISTINCT snapshot FROM evaluations")}
    assert scored_on == set(stored["train_keys"] + stored["held_out_keys"])
    assert resumed.fitness.values == reference.fitness.values
    assert resumed.held_out == reference.held_out
    assert "warning" not in events


def test_a_resumed_run_whose_snapshots_were_not_kept_says_it_scores_on_new_ones(tmp_path):
    config = Config(population=6, generations=2, seed=7, workers=1, held_out_snapshots=0)
    archive, run_id = _interrupted(tmp_path, MeasuringQueue(jobs=60, tagged=True), config)
    assert archive.db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0
    warnings = []
    Evolution(MeasuringQueue(jobs=60, tagged=True), config, archive,
              on_event=lambda kind, data: kind == "warning" and warnings.append(data["message"])).run(resume=run_id)
    assert len(warnings) == 1 and "scored on the new ones" in warnings[0]


def test_corrupt_archive_gives_a_clear_error(tmp_path):
    path = tmp_path / "archive.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ArchiveError, match="not a usable archive"):
        Archive(path)


def test_in_process_resume_remakes_the_same_run(tmp_path, queue_adapter):
    """Stop after generation 2, resume to 5: same champion as one uninterrupted run."""
    config = Config(population=10, generations=5, seed=7, workers=2, held_out_snapshots=0)
    reference = Evolution(queue_adapter, config, Archive(tmp_path / "ref.db")).run()

    archive = Archive(tmp_path / "resume.db")
    short = Config(**{**config.to_dict(), "generations": 2})
    first = Evolution(queue_adapter, short, archive).run()
    archive.set_status(first.run_id, "interrupted")
    resumed = Evolution(queue_adapter, config, archive).run(resume=first.run_id)
    assert resumed.champion.source == reference.champion.source
    assert resumed.fitness.values == reference.fitness.values
    assert archive.evaluation_count(first.run_id) == reference.evaluated


class OwnBug(Operator):
    """Makes a variant that fails its own way, before it could meet any limit."""
    name = "own_bug"

    def __call__(self, parents, context):
        bug = f"def priority(job, now):\n    raise ValueError('own bug {context.rng.random()}')\n"
        return self.child(bug, parents, context)


def test_seeds_failing_on_the_memory_limit_name_it_though_their_variants_failed_otherwise():
    """The hint that names --memory-mb rests on the seeds: generation 0's variants of them may
    fail their own ways first (in CI a mutant's bad plan hid the hint once)."""
    hungry = [Program(f"def priority(job, now):\n    return len([{k}] * 10**9)\n") for k in range(2)]
    config = Config(population=5, generations=0, workers=1, memory_mb=256, train_snapshots=1, held_out_snapshots=1)
    archive = Archive()
    evolution = Evolution(single_queue.SingleQueueAdapter(jobs=20), config, archive, operators=[(OwnBug(), 1.0)],
                          seeds=hungry)
    with pytest.raises(EvolutionError) as failed:
        evolution.run()
    errors = [birth["error"] for birth in archive.births(evolution.run_id)]
    assert errors[:2] == ["memory limit exceeded"] * 2
    assert len(errors) == 5 and all("ValueError: own bug" in e for e in errors[2:]), errors
    message = str(failed.value)
    assert message.startswith("no seed program is valid (memory limit exceeded)"), message
    assert "every seed ran out of memory, so --memory-mb 256 is likely too small" in message


def test_a_worker_with_no_memory_left_to_reply_is_a_memory_failure():
    """Under a tight cap the reply itself can meet it: the worker exits with its own code, which
    reads as the memory limit (so the hint names --memory-mb), not as an unexplained exit."""
    from autopoiesis.evaluate import NO_MEMORY_TO_REPLY, _death_reason, hit_a_limit
    from autopoiesis.evolution import _limit_hint

    reason = _death_reason(NO_MEMORY_TO_REPLY, Limits())
    assert reason.startswith("memory limit exceeded") and hit_a_limit(reason)
    assert _death_reason(1, Limits()) == "worker exited unexpectedly (code 1)"
    assert "--memory-mb 64 is likely too small" in _limit_hint(["memory limit exceeded", reason], Config(memory_mb=64))


def test_the_limit_hint_names_the_limit_every_seed_failed_on():
    """Near a tiny memory cap a seed can time out instead (`evolve --memory-mb 1` once had one
    baseline of ten do so): the hint still names --memory-mb; timeouts alone name --timeout;
    one failure of the program's own names nothing."""
    from autopoiesis.evolution import _limit_hint

    cfg = Config(memory_mb=1, timeout=10.0)
    timed_out = "timed out after 10 s of CPU time"
    assert _limit_hint(["memory limit exceeded"] * 9 + [timed_out], cfg) == (
        ": every seed ran out of memory (9) or of time (1) near the memory cap, so --memory-mb 1 is likely too small")
    assert _limit_hint([timed_out] * 3, cfg) == ": every seed timed out, so --timeout 10 is likely too short"
    assert _limit_hint(["memory limit exceeded", "ValueError: mine"], cfg) == ""
    assert _limit_hint([], cfg) == ""
