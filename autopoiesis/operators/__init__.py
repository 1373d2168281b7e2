"""Variation operators. Offline: ``gp.Mutate``, ``gp.Crossover``, ``tune.Constants``, ``recombine.Slots``."""

from __future__ import annotations

from typing import Collection

from . import gp, recombine, tune
from .base import Context, Operator, OperatorError

__all__ = ["Context", "Operator", "OperatorError", "gp", "recombine", "tune", "offline"]


def offline(slots: Collection[str] = ()) -> list[tuple[Operator, float]]:
    """The default offline mix for an adapter with these slots: operators and their rates (sum 1).

    ``recombine.Slots`` joins where there are several slots; with one, taking it whole
    would only copy the second parent."""
    if len(slots) == 1:
        return [(gp.Mutate(), 0.5), (gp.Crossover(), 0.25), (tune.Constants(), 0.25)]
    return [(gp.Mutate(), 0.4), (gp.Crossover(), 0.2), (tune.Constants(), 0.2), (recombine.Slots(), 0.2)]
