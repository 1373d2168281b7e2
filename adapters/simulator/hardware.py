"""GPUs and models as data: the shipped TOML tables plus any the user adds.

``load_gpus(extra)`` / ``load_models(extra)`` merge user TOML files over the shipped
ones (same format; a user entry with an existing name replaces it).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
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
    def __str__(self) -> str:
        return self.args[0]


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


@lru_cache(maxsize=16)
def _tables(kind: str, extra: tuple[str, ...]) -> dict:
    table = _load(DATA / f"{kind}.toml")
    for path in extra:
        table.update(_load(Path(path)))
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
