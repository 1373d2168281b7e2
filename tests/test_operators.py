import math
import random
import re

import pytest
from deap import gp as deap_gp

from autopoiesis.operators import Context, OperatorError, gp, tune
from autopoiesis.program import Program
from autopoiesis import sandbox
from conftest import single_queue

SLOT = single_queue.PRIORITY


def context(seed=0):
    random.seed(seed)
    return Context({SLOT.name: SLOT}, random.Random(seed))


def test_gp_round_trip_of_random_trees():
    pset = gp.primitive_set(SLOT.name, SLOT.primitives)
    for seed in range(200):
        random.seed(seed)
        tree = deap_gp.PrimitiveTree(deap_gp.genHalfAndHalf(pset, min_=1, max_=4))
        source = gp.to_source(SLOT, tree)
        sandbox.check(source, [SLOT])
        again = gp.from_source(source, SLOT)
        assert gp.to_source(SLOT, again) == source


def _same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_gp_renders_trees_without_dead_code_and_with_the_same_value(monkeypatch):
    """``x if True else y`` is rendered ``x`` (and so on), and what it computes does not change."""
    pset = gp.primitive_set(SLOT.name, SLOT.primitives)
    trees = []
    for seed in range(300):
        random.seed(seed)
        trees.append(deap_gp.PrimitiveTree(deap_gp.genHalfAndHalf(pset, min_=2, max_=5)))
    clean = [gp.to_source(SLOT, tree) for tree in trees]
    monkeypatch.setattr(gp._Simplify, "visit", lambda self, node: node)
    raw = [gp.to_source(SLOT, tree) for tree in trees]
    monkeypatch.undo()
    changed = [(r, c) for r, c in zip(raw, clean) if r != c]
    assert len(changed) > 30, "random trees carry dead code often; the check below must see some"
    rng = random.Random(0)
    for r, c in changed:
        assert not re.search(r"if (True|False) else|\b(True|False) (and|or)\b|\b(and|or) (True|False)\b", c), c
        assert gp.to_source(SLOT, gp.from_source(c, SLOT)) == c  # still inside the primitive set
        before, after = sandbox.compile_policy(r, [SLOT]).priority, sandbox.compile_policy(c, [SLOT]).priority
        for _ in range(20):
            job, now = single_queue.Job(rng.uniform(-5, 5), rng.uniform(-5, 5)), rng.choice([0.0, rng.uniform(-5, 5)])
            assert _same_value(before(job, now), after(job, now)), (r, c)


def test_gp_mutation_never_returns_its_parent_plus_dead_code():
    parent = Program("def priority(job, now):\n    return job.size if job.arrival < now else job.arrival\n")
    for seed in range(200):
        child = gp.Mutate()([parent], context(seed))
        assert child.id != parent.id, child.source


def test_gp_compiled_source_is_readable_and_runs():
    source = (
        "def priority(job, now):\n"
        "    return job.size / (now - job.arrival or 1.0) if job.size < 2.0 else -min(job.size, 3.5)\n"
    )
    tree = gp.from_source(source, SLOT)
    text = gp.to_source(SLOT, tree)
    assert "job.size" in text and "min(" in text and " if " in text
    policy = sandbox.compile_policy(text, [SLOT])
    assert policy.priority(single_queue.Job(1.0, 1.0), 3.0) == pytest.approx(0.5)


def test_gp_parses_hand_written_baseline():
    tree = gp.from_source(single_queue.FCFS, SLOT)
    assert str(tree) == "arrival"


def test_gp_refuses_programs_outside_the_primitive_set():
    source = "import math\ndef priority(job, now):\n    return math.log(job.size)\n"
    with pytest.raises(OperatorError, match="outside the GP primitive set"):
        gp.from_source(source, SLOT)
    source = "def priority(job, now):\n    x = job.size\n    return x\n"
    with pytest.raises(OperatorError, match="single return expression"):
        gp.from_source(source, SLOT)


def test_gp_mutation_respects_size_limits_and_changes_the_program():
    parent = Program(single_queue.FCFS)
    for seed in range(50):
        child = gp.Mutate()([parent], context(seed))
        tree = gp.from_source(child.source, SLOT)
        assert tree.height <= SLOT.primitives.max_height and len(tree) <= SLOT.primitives.max_size
        assert child.id != parent.id
        assert child.parents == (parent.id,) and child.operator == "gp.Mutate"


def test_gp_mutation_keeps_the_rest_of_a_multi_function_program():
    source = "LIMIT = 3\n\ndef helper(x):\n    return x\n\n\ndef priority(job, now):\n    return job.arrival\n"
    child = gp.Mutate()([Program(source)], context(1))
    assert child.source.startswith("LIMIT = 3\n\ndef helper(x):\n    return x\n")


def test_gp_crossover_mixes_parents():
    a = Program("def priority(job, now):\n    return job.size * 2.0 + job.arrival\n")
    b = Program("def priority(job, now):\n    return min(now, job.arrival) - 1.5\n")
    children = {gp.Crossover()([a, b], context(seed)).id for seed in range(20)}
    assert len(children) > 3
    assert not children & {a.id, b.id}


def test_gp_operators_are_deterministic_under_the_same_seed():
    parent = Program("def priority(job, now):\n    return job.size * 2.0 + job.arrival\n")
    first = [gp.Mutate()([parent], context(s)).source for s in range(10)]
    second = [gp.Mutate()([parent], context(s)).source for s in range(10)]
    assert first == second


def test_tune_constants_keeps_comments_and_changes_numbers():
    source = (
        "def priority(job, now):\n"
        "    # favour short jobs, but age\n"
        "    return job.size * 2.5 - 0.1 * (now - job.arrival)  # aging\n"
    )
    child = tune.Constants(rate=1.0)([Program(source)], context(3))
    assert "# favour short jobs, but age" in child.source and "# aging" in child.source
    assert child.source != source
    sandbox.check(child.source, [SLOT])


def test_tune_constants_without_numbers_fails_with_a_reason():
    with pytest.raises(OperatorError, match="no numeric literals"):
        tune.Constants()([Program(single_queue.FCFS)], context())


def test_tune_constants_skips_indices_and_booleans():
    source = "W = [1.0, 2.0]\ndef priority(job, now):\n    return W[0] if True else 0\n"
    for seed in range(20):
        try:
            child = tune.Constants(rate=1.0)([Program(source)], context(seed))
        except OperatorError:
            continue
        assert "W[0]" in child.source and "True" in child.source


def test_program_id_ignores_comments_and_layout():
    a = Program("def priority(job, now):\n    return job.size  # short first\n")
    b = Program("def priority(job,now):\n\n    return (job.size)\n")
    assert a.id == b.id


# -- recombine.Slots: one slot's whole policy from the other parent ---------------------

def _simulator():
    from autopoiesis.adapters.simulator import SimulatorAdapter

    adapter = SimulatorAdapter("burst")
    return adapter.baselines(), {slot.name: slot for slot in adapter.slots()}


def _combination(**parts):
    """The program that fills every slot with the named baselines (others: default's)."""
    from autopoiesis.adapters.simulator.slots import SLOTS

    choice = {"schedule": "search", "reschedule": "never", "dispatch": "capacity_jsq", "priority": "fcfs", **parts}
    return Program("\n\n\n".join(slot.baselines[choice[slot.name]].strip() for slot in SLOTS) + "\n")


def test_recombining_slots_hands_one_slot_over_whole():
    from autopoiesis.operators.recombine import Slots

    baselines, slots = _simulator()
    first, second = baselines["reschedule:periodic"], baselines["dispatch:least_outstanding"]
    children = {Slots()([first, second], Context(slots, random.Random(seed))).id for seed in range(12)}
    # the two slots in which they differ, each taken whole: exactly two static combinations
    assert children == {_combination(reschedule="periodic", dispatch="least_outstanding").id,
                        _combination().id}
    child = Slots()([first, second], Context(slots, random.Random(0)))
    assert child.operator == "recombine.Slots" and child.parents == (first.id, second.id)


def test_recombining_slots_moves_the_constants_a_slot_needs_and_drops_the_ones_it_leaves():
    from autopoiesis.operators.recombine import Slots

    baselines, slots = _simulator()
    periodic, threshold = baselines["reschedule:periodic"], baselines["reschedule:threshold"]
    gained = Slots()([threshold, periodic], Context(slots, random.Random(0)))
    assert gained.id == _combination(reschedule="periodic").id  # STATE and EVERY came with it
    lost = Slots()([periodic, threshold], Context(slots, random.Random(0)))
    assert lost.id == _combination(reschedule="threshold").id
    assert "EVERY" not in lost.source and "STATE" not in lost.source
    assert "BUDGET = 12" in lost.source  # schedule still needs it
    sandbox.compile_policy(lost.source, list(slots.values()))


def test_recombining_slots_brings_imports_and_keeps_shared_helpers_once():
    from autopoiesis.operators.recombine import Slots

    _, slots = _simulator()
    first = Program(_combination().source.replace(
        "def dispatch(", "def load(replica):\n    return replica.outstanding\n\n\ndef dispatch(").replace(
        "key=lambda i: (replicas[i].outstanding + 1.0) / replicas[i].speed", "key=lambda i: load(replicas[i])"))
    second_source = first.source.replace(
        "    return None", "    return math.log1p(window.outstanding) > 3.0  # busy: re-plan")
    second = Program("import math\n\n\n" + second_source)
    child = Slots()([first, second], Context(slots, random.Random(0)))
    assert child.source.startswith("import math\n")
    assert "math.log1p(window.outstanding) > 3.0  # busy: re-plan" in child.source  # comments survive
    assert child.source.count("def load(") == 1
    sandbox.compile_policy(child.source, list(slots.values()))


def test_recombining_slots_refuses_a_constant_that_means_two_things():
    from autopoiesis.operators.recombine import Slots

    _, slots = _simulator()
    base = _combination().source.replace("def reschedule(", "W = 1.0\n\n\ndef reschedule(").replace(
        "    return None", "    return window.outstanding > W * 100").replace(
        "(replicas[i].outstanding + 1.0)", "(replicas[i].outstanding + W)")
    first, second = Program(base), Program(base.replace("W = 1.0", "W = 3.0"))
    with pytest.raises(OperatorError, match="W means one thing"):
        Slots()([first, second], Context(slots, random.Random(0)))
    with pytest.raises(OperatorError, match="do not differ"):
        Slots()([first, first], Context(slots, random.Random(0)))


def test_the_offline_mix_recombines_slots_where_there_is_more_than_one():
    from autopoiesis.adapters.simulator import SimulatorAdapter
    from autopoiesis.evolution import Evolution
    from autopoiesis.operators import offline
    from autopoiesis.operators.recombine import Slots

    for slots in (["schedule", "dispatch"], ["priority"]):
        assert sum(w for _, w in offline(slots)) == pytest.approx(1.0)  # --llm-rate stays the LLM's share
    assert any(isinstance(op, Slots) for op, _ in Evolution(SimulatorAdapter("burst")).operators)
    # one slot: taking it whole would only copy the second parent, so it is left out, and refuses
    assert not any(isinstance(op, Slots) for op, _ in Evolution(single_queue.SingleQueueAdapter(jobs=20)).operators)
    first, second = Program(single_queue.FCFS), Program(single_queue.SJF)
    with pytest.raises(OperatorError, match="no other slot"):
        Slots()([first, second], context())


def test_recombining_slots_declines_parents_it_cannot_read():
    from autopoiesis.operators.recombine import Slots

    baselines, slots = _simulator()
    deep = Program("def dispatch(request, replicas, now):\n    return " + "(" * 400 + "0" + ")" * 400 + "\n")
    broken = Program("def dispatch(request, replicas, now) return 0\n")
    for parents in ([deep, baselines["default"]], [baselines["default"], broken]):
        with pytest.raises(OperatorError, match="cannot recombine"):
            Slots()(parents, Context(slots, random.Random(0)))
