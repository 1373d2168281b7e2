"""NSGA-II for several objectives (e.g. mean latency and tail latency).

Survival by non-dominated sorting and crowding distance (``selNSGA2``); parents by
DEAP's crowded tournament ``selTournamentDCD``, which needs a multiple of four.
"""

from __future__ import annotations

import random

from deap import tools

from .base import Strategy


class NSGA2(Strategy):
    name = "nsga2"

    def select(self, population, k):
        tools.selNSGA2(population, len(population))  # assigns crowding distances
        usable = len(population) - len(population) % 4
        parents = []
        while len(parents) < k:
            if usable >= 4:
                parents += tools.selTournamentDCD(population, usable)
            else:
                parents += [random.choice(population) for _ in range(k)]
        return parents[:k]

    def survive(self, population, offspring, size):
        pool = {i.program.id: i for i in population + offspring}
        return tools.selNSGA2(list(pool.values()), size)
