"""Search strategies (installed as ``autopoiesis.search``), built on DEAP's tools."""

from .base import Individual, Strategy, fitness_class
from .generational import Generational
from .islands import Islands
from .mu_plus_lambda import MuPlusLambda
from .nsga2 import NSGA2

STRATEGIES = {
    "generational": Generational,
    "mu-plus-lambda": MuPlusLambda,
    "islands": Islands,
    "nsga2": NSGA2,
}

__all__ = ["Individual", "Strategy", "fitness_class", "Generational", "MuPlusLambda", "Islands", "NSGA2", "STRATEGIES", "make"]


def make(name: str, **kwargs) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name](**kwargs)
