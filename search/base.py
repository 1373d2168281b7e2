"""What every strategy shares: individuals with DEAP fitness, and the Strategy interface.

A strategy decides who breeds and who survives; the evolution loop does the rest
(variation, deduplication, evaluation, archiving), so every strategy gets resume,
caching and the sandbox for free.
"""

from __future__ import annotations

from typing import Sequence

from deap import base

from autopoiesis.metrics import Fitness, Objective
from autopoiesis.program import Program, program_size


def fitness_class(objectives: Sequence[Objective]) -> type:
    """A DEAP Fitness class with the objectives' weights (no global creator state)."""
    return type("Fitness", (base.Fitness,), {"weights": tuple(o.weight for o in objectives)})


class Individual:
    """A scored program as DEAP's selection tools expect it (``.fitness.values``)."""

    __slots__ = ("program", "fitness", "scores")

    def __init__(self, program: Program, scores: Fitness, fitness_cls: type):
        self.program = program
        self.scores = scores
        self.fitness = fitness_cls(scores.vector())

    def __repr__(self) -> str:
        return f"Individual({self.program.label()}, {self.scores.vector()})"


class Strategy:
    """Selection and replacement. Subclasses override the parts they change."""

    name = "strategy"
    islands = 1

    def offspring_count(self, size: int) -> int:
        return size

    def select(self, population: list[Individual], k: int) -> list[Individual]:
        """Parents for k children (draws from the global ``random``, seeded by the loop)."""
        raise NotImplementedError

    def survive(self, population: list[Individual], offspring: list[Individual], size: int) -> list[Individual]:
        raise NotImplementedError

    def migrate(self, islands: list[list[Individual]], generation: int) -> None:
        """Move individuals between islands in place (single-population strategies: nothing)."""

    def best(self, population: Sequence[Individual]) -> Individual:
        """The champion: best on the first (ranking) objective; a tie goes to the better on the
        next ones, so with several objectives the champion is on the Pareto front, and then to
        the smaller program (``x`` over ``x * 2.0 + 1.5`` when they order alike)."""
        return min(population, key=lambda i: (tuple(-w for w in i.fitness.wvalues), program_size(i.program.source),
                                              i.program.id))
