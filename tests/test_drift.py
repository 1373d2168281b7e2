"""Drift detection on live-window signals: Page-Hinkley with a cooldown, and the two-window test."""

import random

from autopoiesis.metrics import DriftDetector, PageHinkley, moved


def noisy(mean, n, seed, spread=0.05):
    rng = random.Random(seed)
    return [mean * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def first_alarm(test, values):
    return next((i for i, v in enumerate(values) if test.update(v)), None)


def test_stationary_noise_raises_no_alarm():
    for seed in range(20):
        assert first_alarm(PageHinkley(), noisy(10.0, 300, seed)) is None


def test_a_step_up_or_down_is_found_quickly():
    for seed in range(10):
        test = PageHinkley()
        before = noisy(10.0, 50, seed)
        assert first_alarm(test, before) is None
        up = first_alarm(test, noisy(15.0, 50, seed + 100))
        assert up is not None and up < 10
        test = PageHinkley()
        first_alarm(test, before)
        down = first_alarm(test, noisy(6.0, 50, seed + 200))
        assert down is not None and down < 10


def test_scale_free_thresholds():
    """The same relative change is found in a rate of 0.5/s and in 5,000 tokens."""
    for mean in (0.5, 5000.0):
        test = PageHinkley()
        first_alarm(test, noisy(mean, 40, 1))
        assert first_alarm(test, noisy(mean * 1.4, 40, 2)) is not None


def test_detector_names_what_drifted_and_cools_down():
    detector = DriftDetector(cooldown=3)
    steady = {"rate": 10.0, "mean_prompt": 800.0, "slo_attainment": 0.95}
    for _ in range(20):
        assert detector.update(steady) == []
    shifted = dict(steady, rate=20.0)
    triggers = [detector.update(shifted) for _ in range(12)]
    fired = [i for i, t in enumerate(triggers) if t]
    assert fired and triggers[fired[0]] == ["rate"]
    assert all(not triggers[i] for i in range(fired[0] + 1, min(fired[0] + 4, 12)))  # cooldown


def test_cluster_events_trigger_at_once():
    detector = DriftDetector()
    assert detector.update({"rate": 10.0}, cluster_events=1) == ["cluster"]


def test_a_cluster_event_triggers_even_while_cooling_down():
    detector = DriftDetector(cooldown=3)
    assert detector.update({"rate": 10.0}, cluster_events=1) == ["cluster"]
    assert detector.update({"rate": 10.0}) == []  # cooling down
    assert detector.update({"rate": 10.0}, cluster_events=1) == ["cluster"]  # a fact, not noise


def test_the_two_window_test_names_what_moved_by_more_than_its_factor_either_way():
    before = {"rate": 8.5, "mean_prompt": 100.0, "slo_attainment": 1.0}
    assert moved(before, {"rate": 11.5, "mean_prompt": 182.0, "slo_attainment": 0.7}) == ["rate", "mean_prompt",
                                                                                        "slo_attainment"]
    assert moved(before, {"rate": 10.0, "mean_prompt": 81.0, "slo_attainment": 0.9}) == []  # within 1.25 either way
    assert moved(before, {"rate": 6.7, "mean_prompt": 126.0}) == ["rate", "mean_prompt"]  # down by more than 1/1.25
    assert moved({"rate": 0.0}, {"rate": 0.0}) == [] and moved({"rate": 0.0}, {"rate": 0.1}) == ["rate"]
    assert moved(before, {"rate": float("nan")}) == []  # nothing to compare: no claim
    assert moved(before, {"rate": 11.5}, factor=1.5) == []
