"""The one interface every variation operator implements (offline and LLM alike)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..program import PolicySlot, Program


class OperatorError(Exception):
    """An operator could not make a child from these parents (reason in the message)."""


@dataclass
class Context:
    """What an operator may know besides its parents.

    ``rng`` is seeded per generation by the evolution loop (which also seeds the
    global ``random`` that DEAP draws from), so children are reproducible and a
    resumed run remakes the same children. ``extra`` carries what richer operators
    use (fitness of parents, snapshot summaries, archive samples).
    """

    slots: Mapping[str, PolicySlot]
    rng: random.Random
    generation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Operator:
    """Makes one child program from ``arity`` parents, or raises OperatorError."""

    name: str = "operator"
    arity: int = 1

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        raise NotImplementedError

    def child(self, source: str, parents: Sequence[Program], context: Context) -> Program:
        return Program(
            source,
            parents=tuple(p.id for p in parents),
            operator=self.name,
            generation=context.generation,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
