"""Variation operators. Offline: ``gp.Mutate``, ``gp.Crossover``, ``tune.Constants``, ``recombine.Slots``."""

from __future__ import annotations

from . import gp, recombine, tune
from .base import Context, Operator, OperatorError

__all__ = ["Context", "Operator", "OperatorError", "gp", "recombine", "tune", "offline"]


def offline() -> list[tuple[Operator, float]]:
    """The default offline mix: operator and its relative rate."""
    return [(gp.Mutate(), 0.5), (gp.Crossover(), 0.25), (tune.Constants(), 0.25), (recombine.Slots(), 0.25)]
