"""The Guard's verdicts on live windows (autopoiesis/guard.py). The controller's use of them,
with the twin confirming a suspect window, is tested on the live simulator in test_online.py."""

from autopoiesis.guard import Guard
from autopoiesis.metrics import Objective


def watching(objective=Objective("mean_e2e_open", "min"), **knobs) -> Guard:
    guard = Guard(objective, **knobs)
    guard.watch({objective.name: 10.0, "in_flight": 40.0})
    return guard


def test_clean_windows_confirm_and_a_regression_past_the_tolerance_is_suspect():
    guard = watching(windows=2, tolerance=0.25)
    assert guard.check({"mean_e2e_open": 12.4, "in_flight": 49.0}, calls=100, fallbacks=0) == ("watch", "")
    verdict, why = guard.check({"mean_e2e_open": 12.6, "in_flight": 40.0}, calls=100, fallbacks=0)
    assert verdict == "suspect" and "mean_e2e_open 12.6" in why and "+26%" in why
    assert guard.watching  # a suspect window does not count: the twin decides
    assert guard.check({"mean_e2e_open": 9.0, "in_flight": 30.0}, calls=100, fallbacks=0) == ("confirm", "")
    assert not guard.watching


def test_a_growing_backlog_is_suspect_but_a_few_queued_requests_are_noise():
    guard = Guard(Objective("mean_e2e_open", "min"), tolerance=0.25)
    guard.watch({"mean_e2e_open": 10.0, "in_flight": 2.0})
    # 2 -> 4 queued doubles the backlog, but is compared with the floor of 10 requests: +20%
    assert guard.check({"mean_e2e_open": 10.0, "in_flight": 4.0}, calls=10, fallbacks=0)[0] == "watch"
    verdict, why = guard.check({"mean_e2e_open": 10.0, "in_flight": 5.0}, calls=10, fallbacks=0)
    assert verdict == "suspect" and "in_flight" in why


def test_a_metric_to_maximize_is_suspect_when_it_falls():
    guard = watching(Objective("slo_attainment", "max"), windows=1)
    guard.reference["slo_attainment"] = 0.8
    assert guard.check({"slo_attainment": 0.9, "in_flight": 40.0}, calls=1, fallbacks=0) == ("confirm", "")
    guard.watch({"slo_attainment": 0.8})
    assert guard.check({"slo_attainment": 0.5, "in_flight": 40.0}, calls=1, fallbacks=0)[0] == "suspect"


def test_fallbacks_past_the_rate_roll_back_at_once_and_missing_numbers_are_no_evidence():
    guard = watching(max_fallback_rate=0.05)
    assert guard.check({"mean_e2e_open": float("nan")}, calls=100, fallbacks=5)[0] == "watch"  # 5%: not past it
    verdict, why = guard.check({"mean_e2e_open": 10.0}, calls=100, fallbacks=6)
    assert (verdict, why) == ("rollback", "6 of 100 hot-path calls fell back") and not guard.watching
    assert guard.failing(calls=0, fallbacks=0) == ""  # no calls, no rate
