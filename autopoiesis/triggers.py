"""When the online loop evolves: a period, drift in the live windows, a cluster event, and
what it owes when a change comes while an evolution runs or the guard watches.

``Triggers`` keeps that bookkeeping and answers, as each window closes, what to evolve for
now and what the window shows as its triggers (docs/online.md, "Triggers"). The controller
says whether it is busy and starts the evolutions; nothing here serves or evolves.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .metrics import DriftDetector, moved

#: triggers seen while an evolution or the guard is busy that are evolved for once it is done: the
#: workload's own changes and the cluster's. SLO attainment moves with the policy, so a drift in it
#: while the guard watches is mostly the deployment's doing, which the guard judges
OWED = ("rate", "mean_prompt", "cluster")


class Triggers:
    """The online loop's triggers: Page-Hinkley per drift signal (``metrics.DriftDetector``),
    a period that first asks whether the workload moved, cluster events, and the changes owed
    while busy. The controller asks at each window's end and on each cluster event."""

    def __init__(self, signals: Sequence[str], threshold: float, cooldown: int, period: int):
        self.drift = DriftDetector(signals, threshold=threshold, cooldown=cooldown)
        self.cooldown, self.period = cooldown, period
        self.since = 0  # windows since an evolution started or a rollback
        self.owed: list[str] = []  # changes seen while busy, not yet evolved for (OWED)
        self.cluster_seen = 0  # this window's cluster events already acted on (or owed)
        self.acted: list[str] = []  # triggers acted on inside the current window

    def window_closed(self, signals: Mapping[str, float], cluster_events: int, ask_moved: Callable[[], list[str]],
                      busy: bool, last: bool) -> tuple[list[str], list[str]]:
        """(what to evolve for now, the window's triggers) as a window closes.

        ``cluster_events`` counts the window's events, the ones acted on mid-window included;
        ``ask_moved`` (``workload_moved`` below, on the live windows) is asked only when the
        period is due;
        ``busy``: an evolution runs or the guard watches, so what fired is owed where it is in
        ``OWED``; ``last``: serving ends with this window, so nothing starts."""
        reasons = self.drift.update(signals, cluster_events=cluster_events - self.cluster_seen)
        self.cluster_seen = 0
        self.since += 1
        if not reasons and self.period and self.since >= self.period:
            reasons = ask_moved() or ["period"]
            if reasons != ["period"]:
                self.drift.quiet = self.cooldown  # a drift trigger, as if Page-Hinkley had fired
        self.owed = list(dict.fromkeys([*self.owed, *(r for r in reasons if r in OWED)]))
        if not busy:  # what changed while an evolution or the guard was busy is evolved for now
            reasons = list(dict.fromkeys([*reasons, *self.owed]))
        if last:
            reasons = []  # an evolution it started could never deploy
        shown = list(dict.fromkeys([*self.acted, *reasons]))
        self.acted = []
        if busy or not reasons:
            return [], shown
        self.owed = []
        return reasons, shown

    def cluster_changed(self, events_seen: int) -> None:
        """GPUs joined, left or got notice mid-window (``events_seen`` of this window so far): owed
        at once, and drift waits its cooldown, as after a cluster trigger at a window's end."""
        self.cluster_seen = events_seen
        self.drift.quiet = self.cooldown
        self.owed = list(dict.fromkeys(["cluster", *self.owed]))

    def take_owed(self) -> list[str]:
        """The owed changes, to evolve for now (mid-window); the window will show them."""
        reasons, self.owed = self.owed, []
        self.acted.extend(reasons)
        return reasons

    def started(self) -> None:
        """An evolution started: the period counts from here."""
        self.since = 0

    def rolled_back(self) -> None:
        """A rollback is a change of its own: the period counts from here and drift waits."""
        self.since = 0
        self.drift.quiet = self.cooldown


def workload_moved(windows: Sequence[Any], history: int, names: Sequence[str], prompts_told: bool) -> list[str]:
    """The workload's signals among ``names`` (arrival rate, mean prompt) that moved by more than
    a factor 1.25 between the last ``history`` windows and the ``history`` before them
    (``metrics.moved``).

    A periodic trigger stands for "nothing changed", and its holdout replays the stretch
    before the snapshot as another sample of the same workload. Page-Hinkley cannot say
    so in its first windows (their mean is its scale) and says it late after a step: on
    real vLLM (10 s windows) a load whose rate and prompts doubled at 30 s still made a
    periodic trigger at 40 s, and its holdout, under capacity at 0-20 s, refused every
    shortest-prompt-first candidate, 32% ahead on the snapshot. This asks outright."""
    if len(windows) < 2 * history:
        return []
    names = [k for k in ("rate", "mean_prompt") if k in names]
    before, after = (workload(ws, names, prompts_told) for ws in (windows[-2 * history:-history], windows[-history:]))
    return moved(before, after)


def workload(windows: Sequence[Any], names: Sequence[str], prompts_told: bool) -> dict[str, float]:
    """``names`` of (rate, mean_prompt) over ``windows`` taken together. A window's mean prompt
    is of what arrived where the adapter tells (``prompts_told``), else of what finished."""
    seconds = sum(w.end - w.start for w in windows)
    out = {"rate": sum(w.arrivals for w in windows) / seconds} if seconds > 0 else {}
    weighted = [(w.metrics["mean_prompt"], w.arrivals if prompts_told else w.metrics.get("requests", 0.0))
                for w in windows if "mean_prompt" in w.metrics]
    count = sum(k for _, k in weighted)
    if count > 0:
        out["mean_prompt"] = sum(m * k for m, k in weighted) / count
    return {k: v for k, v in out.items() if k in names}
