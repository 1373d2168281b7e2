"""Autopoiesis: serving policies as programs that evolve while the system serves."""

from autopoiesis.adapters.base import Adapter, AdapterError, load_adapter
from .archive import Archive, ArchiveError
from .evaluate import Evaluator, Limits, Outcome, Task
from .evolution import Config, Evolution, EvolutionError, Result
from .metrics import Fitness, Objective, Snapshot
from .online import Controller, OnlineConfig
from .program import PolicyError, PolicySlot, Primitives, Program

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterError", "Archive", "ArchiveError", "Config", "Controller", "Evaluator", "Evolution",
    "EvolutionError", "Fitness", "Limits", "Objective", "OnlineConfig", "Outcome", "PolicyError", "PolicySlot", "Primitives",
    "Program", "Result", "Snapshot", "Task", "load_adapter",
]
