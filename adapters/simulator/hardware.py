"""GPUs and models as data: the shipped TOML tables plus any the user adds.

``load_gpus(extra)`` / ``load_models(extra)`` merge user TOML files over the shipped
ones (same format; a user entry with an existing name replaces it).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Iterable

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float
    memory_gb: float
    hbm_gbps: float
    link_gbps: float
    network_gbps: float
    price_per_hour: float
    source: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def bytes_per_kv_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: q, k, v, o projections and a gated MLP."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params


class UnknownHardware(KeyError):
    """A GPU or model that no table holds, or a table entry that is malformed; the message is for the user."""

    def __str__(self) -> str:
        return self.args[0]


def _load(path: Path, kind: str) -> dict:
    """One table file, every entry checked: a user's entry replaces a shipped one whole, so it must be whole."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UnknownHardware(f"{path}: {e}") from None
    cls = GPU if kind == "gpus" else Model
    numbers = [f.name for f in fields(cls) if f.name not in ("name", "source")]
    whole = {f.name for f in fields(cls) if f.type in (int, "int")}  # annotations are strings here
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise UnknownHardware(f"{path}: {name} must be a table ([{name}] and its fields)")
        unknown = sorted(set(entry) - set(numbers) - {"source", "bytes_per_kv_token"})
        missing = [key for key in numbers if key not in entry]
        wrong = [f"{key} must be a positive {'whole number' if key in whole else 'number'}, got {entry[key]!r}"
                 for key in numbers if key in entry and not _positive(entry[key], key in whole)]
        said = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing {', '.join(missing)}"] if missing else []) + wrong
        if said:
            raise UnknownHardware(f"{path}: [{name}]: {'; '.join(said)} (its fields: {', '.join(numbers)})")
    return table


def _positive(value, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        return False
    return 0 < value < float("inf")


@lru_cache(maxsize=16)
def _tables(kind: str, extra: tuple[str, ...]) -> dict:
    table = _load(DATA / f"{kind}.toml", kind)
    for path in extra:
        table.update(_load(Path(path), kind))
    return table


def load_gpus(extra: Iterable[str] = ()) -> dict[str, GPU]:
    return {name: GPU(name=name, **spec) for name, spec in _tables("gpus", tuple(extra)).items()}


def load_models(extra: Iterable[str] = ()) -> dict[str, Model]:
    out = {}
    for name, spec in _tables("models", tuple(extra)).items():
        spec = {k: v for k, v in spec.items() if k != "bytes_per_kv_token"}
        out[name] = Model(name=name, **spec)
    return out


def gpu(name: str, extra: Iterable[str] = ()) -> GPU:
    table = load_gpus(extra)
    if name not in table:
        raise UnknownHardware(f"unknown GPU '{name}' (known: {', '.join(table)}; add one in a TOML file)")
    return table[name]


def model(name: str, extra: Iterable[str] = ()) -> Model:
    table = load_models(extra)
    if name not in table:
        raise UnknownHardware(f"unknown model '{name}' (known: {', '.join(table)}; add one in a TOML file)")
    return table[name]
