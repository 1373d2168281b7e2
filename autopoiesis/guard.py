"""The Guard: watches a new deployment's first live windows and says when to roll it back.

It judges live windows against the incumbent's recent ones; the controller (``online.py``)
confirms a suspect window on the twin before it acts (docs/online.md, "The hot path and
the Guard").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from .metrics import Objective


@dataclass
class Guard:
    """Watches a new deployment's first live windows; says when to roll it back.

    More than ``max_fallback_rate`` of hot-path calls falling back rolls back at once. A
    window is suspect when the guard metric, or the backlog (requests in flight at its
    end), is worse than the incumbent's recent live level (the median of its last clean
    windows) by more than ``tolerance``. Load moves both, so the controller then replays
    that same window on the twin with the incumbent and rolls back only if the incumbent
    would have done better there. ``windows`` clean windows confirm the deployment.
    """

    objective: Objective
    windows: int = 2
    tolerance: float = 0.25
    max_fallback_rate: float = 0.05
    reference: dict[str, float] = field(default_factory=dict)
    left: int = 0
    #: a backlog is compared with at least this many requests as its reference (a few queued is noise)
    floors: dict[str, float] = field(default_factory=lambda: {"in_flight": 10.0})

    @property
    def signals(self) -> tuple[str, ...]:
        return (self.objective.name, "in_flight")

    def watch(self, reference: Mapping[str, float]) -> None:
        self.reference, self.left = dict(reference), self.windows

    @property
    def watching(self) -> bool:
        return self.left > 0

    def failing(self, calls: int, fallbacks: int) -> str:
        """Why the live program fails on the hot path, or '': over ``max_fallback_rate`` of its
        calls fell back. This rolls back at any time, not only while watching."""
        return f"{fallbacks} of {calls} hot-path calls fell back" if calls and fallbacks / calls > \
            self.max_fallback_rate else ""

    def check(self, values: Mapping[str, float], calls: int, fallbacks: int) -> tuple[str, str]:
        """After one window of the new policy: ('rollback' | 'suspect', why), ('confirm' | 'watch', '')."""
        why = self.failing(calls, fallbacks)
        if why:
            self.left = 0
            return "rollback", why
        for name in self.signals:
            value, ref = values.get(name), self.reference.get(name)
            if value is None or ref is None or not math.isfinite(value):
                continue
            direction = self.objective.direction if name == self.objective.name else "min"
            worse = (value - ref) / max(abs(ref), self.floors.get(name, 1e-9))
            worse = worse if direction == "min" else -worse
            if worse > self.tolerance:
                return "suspect", f"live {name} {value:.4g} vs the incumbent's recent {ref:.4g} ({worse:+.0%})"
        return self.clean()

    def clean(self) -> tuple[str, str]:
        self.left -= 1
        return ("confirm", "") if self.left <= 0 else ("watch", "")
