"""(mu + lambda): parents and offspring compete; the best mu survive."""

from __future__ import annotations

from deap import tools

from .base import Strategy


class MuPlusLambda(Strategy):
    name = "mu-plus-lambda"

    def __init__(self, ratio: float = 2.0, tournament: int = 2):
        self.ratio = ratio
        self.tournament = tournament

    def offspring_count(self, size):
        return max(1, round(size * self.ratio))

    def select(self, population, k):
        return tools.selTournament(population, k, tournsize=min(self.tournament, len(population)))

    def survive(self, population, offspring, size):
        pool = {i.program.id: i for i in population + offspring}
        return tools.selBest(list(pool.values()), size)
