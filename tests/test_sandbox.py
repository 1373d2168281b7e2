import os
import time

import pytest

from autopoiesis import Archive, Config, Evaluator, Evolution, Limits, Program, Task
from autopoiesis import sandbox
from conftest import ROOT, single_queue
from hostile import PROGRAMS

SLOTS = [single_queue.PRIORITY]
LIMITS = Limits(timeout=3.0, memory_mb=512)


def test_corpus_is_large_enough():
    assert len(PROGRAMS) >= 30


@pytest.fixture(scope="module")
def hostile_outcomes():
    """Every hostile program that passes the static checks, evaluated in the pool."""
    adapter = single_queue.SingleQueueAdapter(jobs=50)
    snapshot = adapter.snapshot(0)
    statically_ok = {}
    for name, source in PROGRAMS.items():
        try:
            sandbox.check(source, SLOTS)
            statically_ok[name] = Program(source)
        except sandbox.Rejected:
            pass
    with Evaluator(adapter, workers=2, limits=LIMITS) as evaluator:
        outcomes = evaluator.evaluate(Task(p.id, p.source, snapshot) for p in statically_ok.values())
        healthy = evaluator.healthy()
        good = evaluator.evaluate([Task("fcfs", single_queue.FCFS, snapshot)])
    return {name: outcomes[(p.id, snapshot.key)] for name, p in statically_ok.items()}, healthy, good


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hostile_program_is_rejected_or_contained(name, hostile_outcomes):
    outcomes, _, _ = hostile_outcomes
    source = PROGRAMS[name]
    if name in outcomes:
        outcome = outcomes[name]
        assert not outcome.ok, f"{name} was scored as if it were a valid policy"
        assert outcome.error and len(outcome.error) > 5
    else:
        with pytest.raises(sandbox.Rejected) as info:
            sandbox.check(source, SLOTS)
        assert len(str(info.value)) > 5


def test_pool_survives_the_corpus(hostile_outcomes):
    _, healthy, good = hostile_outcomes
    assert healthy
    (outcome,) = good.values()
    assert outcome.ok and outcome.metrics["mean_completion_time"] > 0


def test_nothing_escaped():
    assert not os.path.exists("/tmp/autopoiesis-pwned")


@pytest.mark.parametrize("name, reason", [
    ("infinite loop", "timed out"),
    ("endless iterator drained in C", "timed out"),
    ("range too long", "a range of 1,000,000,000,000 items"),
    ("one long C call", "timed out after 3 s of CPU time"),
    ("memory bomb", "memory"),
    ("deep recursion", "recursion"),
    ("returns NaN", "finite"),
    ("wrong return type", "number"),
    ("module internals", "AttributeError"),
    ("state without bound", "its state grew by"),
])
def test_containment_reasons_are_specific(name, reason, hostile_outcomes):
    outcomes, _, _ = hostile_outcomes
    assert reason in outcomes[name].error


@pytest.mark.parametrize("name, reason", [
    ("fork", "import of 'os' is not allowed"),
    ("mro escape", "attribute '__class__'"),
    ("frame escape", "attribute 'gi_frame'"),
    ("format escape", "attribute 'format'"),
    ("file write", "'open'"),
    ("slow import-time code", "module level"),
    ("slow default argument", "default value of priority must be a constant"),  # runs at load, in-process on deploy
    ("wrong arity", "must accept 2 arguments"),
    ("wrong name", "defines none of the policy functions"),
    ("print flood", "'print'"),
    ("mutates input", "assigning or deleting attribute 'size'"),
    ("poisons a module", "assigning or deleting attribute 'log'"),
    ("poisons a class", "assigning or deleting attribute 'most_common'"),
    ("deletes from a module", "assigning or deleting attribute 'sqrt'"),
])
def test_rejection_reasons_are_readable(name, reason):
    with pytest.raises(sandbox.Rejected, match=None) as info:
        sandbox.check(PROGRAMS[name], SLOTS)
    assert reason in str(info.value)


def test_allowed_program_with_imports_and_helpers_compiles():
    source = (
        "import math\nfrom collections import deque\nWEIGHT = 0.5\n\n"
        "def helper(x):\n    return math.log1p(x)\n\n"
        "def priority(job, now):\n    return helper(job.size) * WEIGHT + len(deque([1]))\n"
    )
    policy = sandbox.compile_policy(source, SLOTS)
    value = policy.priority(single_queue.Job(0.0, 2.0), 1.0)
    assert value == pytest.approx(math_log1p(2.0) * 0.5 + 1)


def math_log1p(x):
    import math
    return math.log1p(x)


def test_restricted_namespace_has_no_open_even_if_static_check_is_bypassed():
    namespace = {"__builtins__": sandbox.safe_builtins()}
    with pytest.raises(NameError):
        exec("open('/etc/passwd')", namespace)
    with pytest.raises(ImportError):
        exec("import os", namespace)


def test_a_program_that_changes_a_module_changes_only_its_own_copy():
    """Modules are per program: one that got past the static check and replaced math.log
    would otherwise hand every later program in the process (an evaluation worker's next
    tasks, the serving plane's trusted fallback) its own log."""
    poisoner = {"__builtins__": sandbox.safe_builtins()}
    exec("import math\nmath.log = abs", poisoner)
    victim = {"__builtins__": sandbox.safe_builtins()}
    exec("import math\nvalue = math.log(2.0)", victim)
    assert victim["value"] == pytest.approx(0.6931471805599453)


def test_iterators_a_deadline_cannot_stop_in_c_are_generators_that_mean_the_same():
    """count, cycle, repeat, iter(callable, sentinel) and the combinatoric iterators reach a
    program as generators (a deadline stops them between items); what they yield is unchanged."""
    namespace = {"__builtins__": sandbox.safe_builtins()}
    exec(
        "import itertools\n"
        "from itertools import islice\n"
        "count = list(islice(itertools.count(2.5, 0.5), 4))\n"
        "cycle = list(islice(itertools.cycle('ab'), 5))\n"
        "repeat = list(itertools.repeat(7, 3)) + list(islice(itertools.repeat(1), 2))\n"
        "calls = iter([3, 2, 1, 0, 5])\n"
        "until = list(iter(lambda: next(calls), 0))\n"
        "product = list(itertools.product('ab', repeat=2))\n"
        "choose = list(itertools.combinations(range(4), 2))\n"
        "made = [itertools.count(), iter(int, 1), itertools.permutations('ab')]\n",
        namespace)
    assert namespace["count"] == [2.5, 3.0, 3.5, 4.0]
    assert namespace["cycle"] == list("ababa")
    assert namespace["repeat"] == [7, 7, 7, 1, 1]
    assert namespace["until"] == [3, 2, 1]
    assert namespace["product"] == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
    assert namespace["choose"] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert [type(x).__name__ for x in namespace["made"]] == ["generator"] * 3
    with pytest.raises(TypeError, match="must be callable"):
        exec("iter(3, 0)", namespace)
    with pytest.raises(TypeError):
        exec("import itertools\nitertools.product(5)", namespace)  # arguments are checked at the call


def _run(body: str):
    """Compile ``body`` as a program (so the sandbox's rewrites apply) and run it once."""
    source = "import bisect\nimport functools\nimport itertools\n\ndef priority(job, now):\n" + \
        "".join(f"    {line}\n" for line in body.splitlines())
    return sandbox.compile_policy(source, SLOTS).priority.__wrapped__(None, 0.0)


def test_functions_called_per_item_from_c_mean_the_same_through_bytecode():
    """map, filter, itertools' function-taking iterators, reduce, cmp_to_key and any ``key=``
    argument (or ``**`` mapping) reach a program in forms that call the function from
    bytecode (so a deadline can stop a fan-out between items); what they compute is
    unchanged, errors included."""
    assert _run("return list(map(abs, [-1, 2, -3])) + list(map(pow, [2, 3], [3, 2, 9]))") == [1, 2, 3, 8, 9]
    assert _run("return list(filter(None, [0, 1, '', 'x'])) + list(filter(lambda x: x > 1, [1, 2, 3]))") == \
        [1, "x", 2, 3]
    assert _run("xs = [[3, 1], [2], [5, 5]]\nxs.sort(key=sum)\n"
                "return [sorted(['bb', 'a', 'ccc'], key=len), max([[1, 2], [5]], key=sum), min(3, 1, 2),\n"
                "        max([], default=7), sorted([3, 1], reverse=True), min([4, 2], key=None), xs,\n"
                "        sorted(['bb', 'a'], **{'key': len, 'reverse': True}), bisect.bisect([1, 2, 3], 2, key=abs),\n"
                "        sorted([3, 1, 2], key=functools.cmp_to_key(lambda a, b: b - a)), dict(key=3)]") == \
        [["a", "bb", "ccc"], [5], 1, 7, [3, 1], 2, [[2], [3, 1], [5, 5]], ["bb", "a"], 2, [3, 2, 1], {"key": 3}]
    assert _run("return [functools.reduce(max, [3, 9, 2]), functools.reduce(lambda a, b: a - b, [1, 2], 10)]") == [9, 7]
    assert _run("return [list(itertools.starmap(pow, [(2, 5)])), list(itertools.accumulate([1, 2, 3])),\n"
                "        [(k, list(v)) for k, v in itertools.groupby('aab')], list(itertools.takewhile(bool, [1, 0, 1]))]") \
        == [[32], [1, 3, 6], [("a", ["a", "a"]), ("b", ["b"])], [1]]
    assert type(_run("return map(abs, [1])")).__name__ == "generator"
    for bad, error in (("map(3, [1])", "not callable"), ("sorted([1], key=3)", "not callable"),
                       ("[1].sort(key=3)", "not callable"), ("sorted([1], **3)", "must be a mapping"),
                       ("max([])", "empty"), ("functools.reduce(max, [])", "empty")):
        with pytest.raises((TypeError, ValueError), match=error):
            _run(f"return {bad}")


@pytest.mark.parametrize("call", ["lists.sort(key=sum)", "sorted(lists, key=sum)", "lists.sort(**{'key': sum})",
                                  "sorted(lists, key=functools.cmp_to_key(math.dist))",
                                  "bisect.insort(lists, lists[0], key=sum)"])
def test_a_c_key_called_per_item_from_c_stops_at_the_deadline(call):
    """Ten thousand sums of a million items, called per item by a list's sort (a method the
    namespace cannot wrap) or by anything else that takes a ``key``: the 50 ms deadline stops
    it between items instead of after minutes."""
    policy = sandbox.compile_policy("import bisect\nimport functools\nimport math\n\ndef priority(job, now):\n"
                                    f"    lists = [range(10 ** 6)] * 10 ** 4\n    {call}\n    return 0.0\n", SLOTS)
    deadline, started = sandbox.CpuDeadline(0.05), time.process_time()
    with pytest.raises(sandbox.DeadlinePassed):
        with deadline:
            policy.priority.__wrapped__(None, 0.0)
    assert time.process_time() - started < 1.0


def test_a_range_longer_than_a_policy_may_use_is_an_error():
    namespace = {"__builtins__": sandbox.safe_builtins()}
    exec("small = sum(range(0, 10**7, 10))\nlast = range(10)[-1]", namespace)
    assert namespace["small"] == sum(range(0, 10**7, 10)) and namespace["last"] == 9
    with pytest.raises(ValueError, match="a range of 1,000,000,000,000 items is longer than a policy may use"):
        exec("sum(range(10**12))", namespace)
    with pytest.raises(ValueError, match=r"a range of over 2\*\*63 items"):
        exec("range(10**30)", namespace)


def test_bounded_state_passes_and_state_that_grows_with_the_calls_does_not():
    """A counter (as reschedule:periodic keeps) or a small table is state a live program may
    keep; a memo keyed by time or request, in a module-level dict or a default value, grows
    with every call, and on the serving plane that is a leak for as long as it is deployed."""
    adapter = single_queue.SingleQueueAdapter(jobs=1500)
    snapshot = adapter.snapshot(0)
    programs = {
        "counter": "STATE = {'calls': 0}\ndef priority(job, now):\n    STATE['calls'] += 1\n    return job.size\n",
        "table": ("WEIGHTS = {}\ndef priority(job, now):\n    WEIGHTS[round(job.size)] = 1.0\n"
                  "    return job.size * WEIGHTS[round(job.size)]\n"),
        "memo in a dict": "SEEN = {}\ndef priority(job, now):\n    SEEN[(now, job.size)] = 1\n    return job.size\n",
        "log in a default": "def priority(job, now, log=[]):\n    log.append(now)\n    return job.size\n",
    }
    with Evaluator(adapter, workers=1, limits=LIMITS) as evaluator:
        outcomes = evaluator.evaluate(Task(name, source, snapshot) for name, source in programs.items())
    by_name = {pid: o for (pid, _), o in outcomes.items()}
    assert by_name["counter"].ok and by_name["table"].ok
    for name in ("memo in a dict", "log in a default"):
        assert not by_name[name].ok and "its state grew by" in by_name[name].error, name


def test_evolution_meeting_every_hostile_program_finishes_with_a_healthy_pool():
    class HostileQueue(single_queue.SingleQueueAdapter):
        def baselines(self):
            seeds = super().baselines()
            seeds.update({name: Program(src, name=name) for name, src in PROGRAMS.items()})
            return seeds

    adapter = HostileQueue(jobs=50)
    archive = Archive()
    config = Config(population=8, generations=2, train_snapshots=1, held_out_snapshots=1,
                    workers=2, timeout=2.0, memory_mb=512)
    evolution = Evolution(adapter, config, archive)
    result = evolution.run()
    births = {b["program"]: b for b in archive.births(result.run_id)}
    for name, source in PROGRAMS.items():
        birth = births[Program(source).id]
        assert birth["status"] in ("rejected", "failed"), name
        assert birth["error"], name
    assert evolution.evaluator.replaced >= 3  # timeouts and memory bombs cost workers...
    stats = archive.generation_stats(result.run_id)
    assert stats[-1]["valid"] > 0  # ...which were replaced: the last generation still scored children
    # Only the FCFS seed and its descendants can be champions.
    assert result.fitness.scalar < 100
    assert "def priority" in result.champion.source


@pytest.mark.parametrize("source, message", [
    ("def priority(request, now):\n    return (1.0\n", "syntax error on line 2"),
    ("def priority(request, now):\n    return 1.0\x00\n", "syntax error: source code string cannot contain null bytes"),
])
def test_a_syntax_error_says_where_when_it_can(source, message):
    with pytest.raises(sandbox.Rejected) as info:
        sandbox.check(source, SLOTS)
    assert str(info.value).startswith(message) and "None" not in str(info.value)


def test_source_parses_in_several_threads_at_once():
    """An online run parses programs on its serving thread (a plan's code id) and on its
    evolution plane at once. CPython 3.11 and 3.12 share the AST converter's recursion count
    between threads, and a collection that runs a finalizer mid-parse lets the other thread
    in: ``ast.parse`` then fails with "SystemError: AST constructor recursion depth mismatch"
    (it ended a test's online run once; this harness with ``ast.parse`` failed in 3 s).
    ``program.parse`` and ``program.compile_tree`` hold a lock."""
    import sys
    import threading

    from autopoiesis.program import compile_tree, parse

    source = (ROOT / "autopoiesis" / "online.py").read_text()
    errors = []

    class Cycle:
        def __del__(self):  # Python code run by a collection inside the other thread's parse
            sum(range(50))

    def work():
        try:
            for _ in range(100):
                for _ in range(200):
                    garbage = Cycle()
                    garbage.self = garbage
                compile_tree(parse(source), "<test>")
        except SystemError as e:
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
