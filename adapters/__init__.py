"""Adapters: serving systems behind one protocol (installed as ``autopoiesis.adapters``)."""

from .base import Adapter, AdapterError, load_adapter, registered

__all__ = ["Adapter", "AdapterError", "load_adapter", "registered"]
