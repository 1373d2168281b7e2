"""Island model: independent generational populations with ring migration.

Islands keep diversity (one island converging early does not drag the rest), and
migration every few generations shares what each found.
"""

from __future__ import annotations

from deap import tools

from .generational import Generational


class Islands(Generational):
    name = "islands"

    def __init__(self, islands: int = 4, interval: int = 3, migrants: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.islands = islands
        self.interval = interval
        self.migrants = migrants

    def migrate(self, islands, generation):
        if len(islands) > 1 and generation % self.interval == 0:
            tools.migRing(islands, self.migrants, tools.selBest, replacement=tools.selWorst)
            for island in islands:  # a migrant that is already on the island is not a second individual
                seen, unique = set(), []
                for ind in island:
                    if ind.program.id not in seen:
                        seen.add(ind.program.id)
                        unique.append(ind)
                island[:] = unique
