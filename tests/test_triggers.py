"""When the online loop evolves (autopoiesis/triggers.py), window by window, without a live
system. The same rules on the live simulator are tested in test_online.py."""

from autopoiesis.online import Window
from autopoiesis.triggers import Triggers, workload, workload_moved

SIGNALS = ("rate", "mean_prompt", "slo_attainment")


def close(t: Triggers, rate=10.0, slo=0.9, cluster=0, moved=lambda: [], busy=False, last=False):
    """One window's end, as the controller closes it: an evolution it is told to start starts."""
    reasons, shown = t.window_closed({"rate": rate, "mean_prompt": 100.0, "slo_attainment": slo}, cluster, moved,
                                     busy=busy, last=last)
    if reasons:
        t.started()
    return reasons, shown


def test_the_period_fires_every_period_windows_and_first_asks_whether_the_workload_moved():
    t = Triggers(SIGNALS, 1.0, cooldown=2, period=3)
    assert [close(t)[0] for _ in range(6)] == [[], [], ["period"], [], [], ["period"]]
    asked = []
    t = Triggers(SIGNALS, 1.0, cooldown=2, period=3)
    out = [close(t, moved=lambda: asked.append(len(asked)) or ["mean_prompt"])[0] for _ in range(3)]
    assert asked == [0] and out == [[], [], ["mean_prompt"]]  # asked only when the period is due
    assert t.drift.quiet == 2  # a drift trigger: drift waits its cooldown, as after Page-Hinkley
    t.rolled_back()
    assert [close(t)[0] for _ in range(3)] == [[], [], ["period"]]  # a rollback restarts the count


def test_a_workload_drift_while_busy_is_owed_and_evolved_for_once_free_an_slo_drift_is_not():
    t = Triggers(SIGNALS, 1.0, cooldown=0, period=0)
    assert all(close(t)[0] == [] for _ in range(5))  # Page-Hinkley's first five windows: its scale
    shown = [close(t, slo=0.0, busy=True)[1] for _ in range(4)]  # SLO attainment collapses
    assert ["slo_attainment"] in shown and t.owed == []  # mostly the deployment's doing: the guard's
    reasons, shown = close(t, rate=40.0, slo=0.0, busy=True)
    assert reasons == [] and shown == ["rate"] and t.owed == ["rate"]
    reasons, shown = close(t, rate=40.0, slo=0.0)
    assert reasons == shown == ["rate"] and t.owed == []


def test_the_last_window_starts_nothing_and_keeps_what_is_owed():
    t = Triggers(SIGNALS, 1.0, cooldown=2, period=1)
    t.cluster_changed(1)  # seen mid-window while busy: owed
    assert close(t, cluster=1, last=True) == ([], [])
    assert t.owed == ["cluster"]


def test_a_cluster_change_acted_on_mid_window_shows_in_its_window_and_does_not_trigger_again():
    t = Triggers(SIGNALS, 1.0, cooldown=2, period=0)
    t.cluster_changed(1)
    assert t.take_owed() == ["cluster"] and t.owed == []
    assert close(t, cluster=1) == ([], ["cluster"])  # its one event was acted on already
    assert close(t, cluster=2) == (["cluster"], ["cluster"])  # two new ones at the next window's end


def window(start, arrivals, mean_prompt, requests):
    """A closed live window as the controller records it (10 s long)."""
    return Window(int(start // 10), start, start + 10.0, "p", False, {"mean_prompt": mean_prompt,
                  "requests": requests}, arrivals, calls=0, fallbacks=0)


def test_the_workload_of_a_stretch_weighs_each_windows_mean_prompt_by_what_it_was_taken_from():
    windows = [window(0, 10, 100.0, 30), window(10, 30, 300.0, 10)]
    assert workload(windows, ("rate", "mean_prompt"), prompts_told=True) == {"rate": 2.0, "mean_prompt": 250.0}
    assert workload(windows, ("rate", "mean_prompt"), prompts_told=False)["mean_prompt"] == 150.0  # of what finished
    assert workload(windows, ("rate",), prompts_told=True) == {"rate": 2.0}
    stretch = [window(0, 10, 100.0, 10), window(10, 10, 100.0, 10), window(20, 30, 100.0, 10), window(30, 30, 100.0, 10)]
    assert workload_moved(stretch, 2, SIGNALS, prompts_told=True) == ["rate"]  # 1 req/s, then 3
    assert workload_moved(stretch, 2, ("slo_attainment",), prompts_told=True) == []  # not a drift signal here
    assert workload_moved(stretch[:3], 2, SIGNALS, prompts_told=True) == []  # too few windows to compare
