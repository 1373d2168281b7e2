"""What goes live, decided on scores alone (autopoiesis/choice.py): the margin, the re-plan
margin, the smallest sufficient change and the holdout. The outcomes are built the way the
evaluator returns them; the controller's use of these rules on real replays is tested in
test_online.py."""

import pytest

from autopoiesis.choice import Choice
from autopoiesis.evaluate import Outcome
from autopoiesis.metrics import Objective
from autopoiesis.program import PolicySlot, Program

SLOTS = (PolicySlot("priority", ("request", "now"), "queue order"),
         PolicySlot("dispatch", ("request", "replicas", "now"), "replica", returns=int))
INCUMBENT = Program("def priority(request, now):\n    return request.arrival\n\n\n"
                    "def dispatch(request, replicas, now):\n    return 0\n")


def changed(priority: str = "", dispatch: str = "") -> Program:
    source = INCUMBENT.source
    if priority:
        source = source.replace("return request.arrival", f"return {priority}")
    if dispatch:
        source = source.replace("return 0", f"return {dispatch}")
    return Program(source)


def scored(key: str, *entries) -> dict:
    """(program, total_time, reconfigurations) or (program, error) -> the evaluator's scores."""
    out = {}
    for program, *rest in entries:
        if isinstance(rest[0], str):
            out[(program.id, key)] = Outcome(program.id, key, None, rest[0], 0.1)
        else:
            out[(program.id, key)] = Outcome(program.id, key, {"total_time": rest[0], "reconfigurations": rest[1]},
                                             None, 0.1)
    return out


def choice(**knobs) -> Choice:
    return Choice(Objective("total_time", "min"), SLOTS, disruption_metric="reconfigurations", **knobs)


def test_a_candidate_that_re_plans_more_needs_the_re_plan_margin():
    reorders, replans_small, replans_big = changed(priority="-request.prompt_tokens"), changed(dispatch="1"), \
        changed(dispatch="len(replicas) - 1")
    scores = scored("s", (INCUMBENT, 100.0, 0), (reorders, 97.0, 0), (replans_small, 97.0, 2), (replans_big, 90.0, 2))
    c = choice(margin=0.01, replan_margin=0.05)
    assert c.required(scores[(INCUMBENT.id, "s")], scores[(replans_small.id, "s")]) == (0.05, True)
    assert c.required(scores[(replans_small.id, "s")], scores[(INCUMBENT.id, "s")]) == (0.01, False)  # staying put
    offered = {p.id: gain for gain, p in c.contenders(INCUMBENT, [reorders, replans_small, replans_big], scores, "s")}
    assert offered == {reorders.id: pytest.approx(0.03), replans_big.id: pytest.approx(0.10)}
    assert choice(margin=0.01, replan_margin=0.0).required(scores[(INCUMBENT.id, "s")],
                                                           scores[(replans_small.id, "s")]) == (0.01, True)


def test_of_gains_within_the_margin_the_fewest_changed_slots_go_live():
    both = changed(priority="-request.prompt_tokens", dispatch="1")
    one = changed(priority="request.arrival * 2")
    c = choice(margin=0.01)
    assert c.changes(INCUMBENT, both) == 2 and c.changes(INCUMBENT, one) == 1 and c.changes(INCUMBENT, INCUMBENT) == 0
    near = scored("s", (INCUMBENT, 100.0, 0), (both, 95.0, 0), (one, 95.5, 0))
    assert c.best(INCUMBENT, [both, one], near, "s") is one  # 4.5% against 5%: equals to the twin
    far = scored("s", (INCUMBENT, 100.0, 0), (both, 95.0, 0), (one, 96.5, 0))
    assert c.best(INCUMBENT, [both, one], far, "s") is both  # 3.5% against 5%: the gain decides
    c.refused.add(both.id)
    assert c.best(INCUMBENT, [both, one], far, "s") is one  # rolled back once: never again


def test_no_gain_a_tie_or_a_failure_offers_nothing():
    same, worse, broken = changed(priority="request.arrival + 0"), changed(dispatch="1"), changed(dispatch="2")
    scores = scored("s", (INCUMBENT, 100.0, 0), (same, 100.0, 0), (worse, 101.0, 0), (broken, "ValueError: no"))
    assert choice(margin=0.0).best(INCUMBENT, [same, worse, broken], scores, "s") is None  # a tie is no win
    assert choice().gain(scores, broken, INCUMBENT, "s") is None
    failing_incumbent = {**scores, **scored("s", (INCUMBENT, "TimeoutError"))}
    assert choice().contenders(INCUMBENT, [same, worse], failing_incumbent, "s") == []  # nothing to compare with


def test_the_holdout_keeps_out_what_loses_there_by_more_than_the_margin():
    slips, fits, fails = changed(priority="-request.prompt_tokens"), changed(dispatch="1"), changed(dispatch="2")
    scores = {**scored("s", (INCUMBENT, 100.0, 0), (slips, 95.0, 0), (fits, 94.0, 0), (fails, 96.0, 0)),
              **scored("h", (INCUMBENT, 100.0, 0), (slips, 100.5, 0), (fits, 103.0, 0), (fails, "MemoryError"))}
    c = choice(margin=0.01)
    assert c.overfit(INCUMBENT, [slips, fits, fails], scores, "h") == {fits.id: "-3.0% total_time",
                                                                      fails.id: "it fails"}
    assert c.overfit(INCUMBENT, [slips, fits, fails], scores, None) == {}  # no holdout (a drift trigger)
    kept = [p for p in (slips, fits, fails) if p.id not in c.overfit(INCUMBENT, [slips, fits, fails], scores, "h")]
    assert c.best(INCUMBENT, kept, scores, "s") is slips
