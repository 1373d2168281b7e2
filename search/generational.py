"""Generational GA: tournament selection, offspring replace parents, elites carried over."""

from __future__ import annotations

from deap import tools

from .base import Strategy


class Generational(Strategy):
    name = "generational"

    def __init__(self, tournament: int = 3, elitism: int = 2):
        self.tournament = tournament
        self.elitism = elitism

    def select(self, population, k):
        return tools.selTournament(population, k, tournsize=min(self.tournament, len(population)))

    def survive(self, population, offspring, size):
        elites = tools.selBest(population, min(self.elitism, size))
        elite_ids = {i.program.id for i in elites}
        fresh = [i for i in offspring if i.program.id not in elite_ids]
        survivors = elites + tools.selBest(fresh, size - len(elites))
        if len(survivors) < size:  # too few valid children: keep the best of the old generation
            taken = {i.program.id for i in survivors}
            rest = [i for i in population if i.program.id not in taken]
            survivors += tools.selBest(rest, size - len(survivors))
        return survivors
