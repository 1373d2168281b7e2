"""Which of an evolution's candidates goes live, if any.

The online controller scores the evolution's champion and every seed on the same twin
replay as the incumbent; this module holds the rules that turn those scores into one
offer (docs/online.md, "What goes live"): the margin, the larger margin for a re-plan,
the smallest sufficient change, and the holdout after a periodic trigger. It knows
nothing of serving or threads, so each rule is tested on scores alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .metrics import Objective
from .program import Program, slot_code_id

#: evaluator scores: (program id, snapshot key) -> outcome (``ok``, ``metrics``)
Scores = Mapping[tuple[str, str], Any]


@dataclass
class Choice:
    """The rules that pick what goes live, with the controller's knobs (``OnlineConfig.margin``,
    ``replan_margin``) and the set of programs rolled back in this run, shared with it."""

    objective: Objective
    slots: Sequence[Any]  # the adapter's policy slots (``.name``)
    margin: float = 0.01  # the gain on the twin a candidate needs (relative)
    replan_margin: float = 0.05  # ... when it disrupts more than the incumbent there
    disruption_metric: str = ""  # the adapter's measure of disruption (the simulator's: reconfigurations)
    refused: set[str] = field(default_factory=set)  # rolled back in this run: never offered again

    def gain(self, scores: Scores, program: Program, incumbent: Program, key: str) -> float | None:
        """``program``'s relative gain on the objective over ``incumbent`` on snapshot ``key``;
        None where either has no score there."""
        out, inc, name = scores.get((program.id, key)), scores.get((incumbent.id, key)), self.objective.name
        if out is None or inc is None or not out.ok or not inc.ok or name not in out.metrics \
                or name not in inc.metrics:
            return None
        return self.objective.improvement(out.metrics[name], inc.metrics[name])

    def required(self, incumbent_score, score) -> tuple[float, bool]:
        """(the gain a champion needs on the twin, whether it disrupts more than the incumbent there),
        from their scores (evaluator outcomes) on one replay.

        A champion that re-plans more (``disruption_metric``) needs ``replan_margin``: the twin
        assumes the observed window goes on, and a re-plan is a bet on that forecast, paid up
        front in reloads and paid again if the guard rolls it back, so it must win by more
        than the forecast's error."""
        name = self.disruption_metric
        disrupts = bool(name and incumbent_score is not None and incumbent_score.ok and score is not None and score.ok
                        and score.metrics.get(name, 0.0) > incumbent_score.metrics.get(name, 0.0))
        return (max(self.margin, self.replan_margin) if disrupts else self.margin), disrupts

    def changes(self, incumbent: Program, program: Program) -> int:
        """How many slots ``program`` decides differently from ``incumbent`` (by code)."""
        return sum(slot_code_id(program.source, slot.name) != slot_code_id(incumbent.source, slot.name)
                   for slot in self.slots)

    def contenders(self, incumbent: Program, candidates: Sequence[Program], scores: Scores,
                   key: str) -> list[tuple[float, Program]]:
        """(gain, program) for each candidate that beats the incumbent on ``key`` by its margin
        and was never rolled back: the only ones ``best`` can offer."""
        inc, options = scores.get((incumbent.id, key)), []
        for program in candidates:
            if program.id == incumbent.id or program.id in self.refused:
                continue
            gain = self.gain(scores, program, incumbent, key)
            if gain is not None and gain > 0 and gain >= self.required(inc, scores[(program.id, key)])[0]:
                options.append((gain, program))
        return options

    def best(self, incumbent: Program, candidates: Sequence[Program], scores: Scores, key: str) -> Program | None:
        """The program to offer, or None when no candidate clears its margin.

        Of the candidates that beat the incumbent on the twin by their margin, those within
        ``margin`` of the best gain are equals as far as the twin's forecast can tell; the one
        that changes the fewest slots is the safer bet (a one-slot baseline swap over a
        champion that also rewrites three other slots)."""
        options = self.contenders(incumbent, candidates, scores, key)
        if not options:
            return None
        top = max(gain for gain, _ in options)
        near = [(self.changes(incumbent, p), -gain, i) for i, (gain, p) in enumerate(options)
                if gain >= top - self.margin]
        return options[min(near)[2]][1]

    def overfit(self, incumbent: Program, candidates: Sequence[Program], scores: Scores,
                holdout: str | None) -> dict[str, str]:
        """Candidates that lose to the incumbent by more than ``margin`` on the ``holdout``
        snapshot (its key; None: no holdout), with why.

        A periodic trigger means no drift was seen: the stretch before the snapshot is another
        sample of the same workload. A program bred on one 60 s sample can fit its particular
        requests (on the simulator's stationary scenario at 1.5x load, champions that won by
        2-4% on their snapshot lost by 9-12% on the next window); one that also holds on the
        sample before has learned the workload, not the sample."""
        inc = scores.get((incumbent.id, holdout)) if holdout is not None else None
        name = self.objective.name
        if inc is None or not inc.ok or name not in inc.metrics:
            return {}
        out = {}
        for program in candidates:
            score = scores.get((program.id, holdout))
            if program.id == incumbent.id or score is None:
                continue
            if not score.ok or name not in score.metrics:
                out[program.id] = "it fails"
                continue
            gain = self.objective.improvement(score.metrics[name], inc.metrics[name])
            if gain < -self.margin:
                out[program.id] = f"{gain:+.1%} {name}"
        return out
