"""Roofline cost model of one replica's engine step.

Per decoder layer and GPU (tensor-parallel degree t), each of the four matmuls (qkv,
o, gate+up, down) takes max(FLOPs / effective FLOP/s, bytes / effective bandwidth)
plus a kernel overhead; the elementwise kernels (norms, rope, activation, residual
add) are memory-bound. Prefill attention is compute-bound and quadratic in the
prompt; decode attention reads the KV cache. Tensor parallelism adds two ring
all-reduces per layer; pipeline parallelism splits layers across stages and adds
activation transfers (no micro-batch overlap is modelled: PP buys memory, not speed).

The efficiency factors live in a calibration file (``data/calibration/NAME.toml``);
``benchmarks/cost_model_error.py`` fits them to measured operator times and states
the error. For a decode-only step with a fixed batch, the time is affine in the total
context length: ``A(batch) + b * context``, which lets the simulator advance many
decode steps in closed form.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

from .hardware import DATA, GPU, Model

GB = 1e9


@dataclass(frozen=True)
class Calibration:
    compute_efficiency: float = 0.70
    memory_efficiency: float = 0.80
    attention_efficiency: float = 0.50
    kernel_overhead_s: float = 4.0e-6
    comm_efficiency: float = 0.70
    comm_latency_s: float = 1.0e-5
    step_overhead_s: float = 2.0e-3
    memory_utilization: float = 0.90
    activation_reserve_gb: float = 1.0
    load_gbps: float = 2.0
    load_fixed_s: float = 5.0


@lru_cache(maxsize=32)
def _calibration_file(name: str) -> dict:
    path = Path(name) if name.endswith(".toml") else DATA / "calibration" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in (DATA / "calibration").glob("*.toml"))
        raise FileNotFoundError(f"no calibration '{name}' (shipped: {known}; or give a .toml path)")
    with open(path, "rb") as f:
        return tomllib.load(f)


def calibration(name: str, gpu_name: str) -> Calibration:
    """The named calibration's [default] table, overridden by the GPU's own table."""
    table = _calibration_file(name)
    allowed = {f.name for f in fields(Calibration)}
    values = {k: v for k, v in table.get("default", {}).items() if k in allowed}
    values.update({k: v for k, v in table.get(gpu_name, {}).items() if k in allowed})
    return replace(Calibration(), **values)


class ReplicaCost:
    """Step times and memory of one replica: a model on tp * pp GPUs of one type."""

    def __init__(self, model: Model, gpu: GPU, tp: int = 1, pp: int = 1, cal: Calibration = Calibration()):
        self.model, self.gpu, self.tp, self.pp, self.cal = model, gpu, tp, pp, cal
        self.flops = gpu.bf16_tflops * 1e12 * cal.compute_efficiency
        self.bandwidth = gpu.hbm_gbps * GB * cal.memory_efficiency
        self.link = gpu.link_gbps * GB * cal.comm_efficiency
        m = model
        kv_dim = m.kv_heads * m.head_dim
        # (in, out) of each matmul on one GPU
        self._matmuls = (
            (m.hidden, (m.hidden + 2 * kv_dim) / tp),
            (m.hidden / tp, m.hidden),
            (m.hidden, 2 * m.intermediate / tp),
            (m.intermediate / tp, m.hidden),
        )
        # elements read+written per token by the memory-bound kernels of one layer
        self._elementwise = 4 * m.hidden + 2 * (m.hidden + kv_dim) / tp + 3 * m.intermediate / tp + 3 * m.hidden
        # KV is split over tp (heads) and pp (layers); stages run one after another
        self.kv_read_per_token = m.bytes_per_kv_token / tp / self.bandwidth
        self._decode_cache: dict[int, float] = {}
        self._linear_cache: dict[tuple[int, int], float] = {}

    # -- memory ------------------------------------------------------------------------
    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def kv_capacity_tokens(self) -> int:
        usable = self.gpus * (self.gpu.memory_gb * self.cal.memory_utilization - self.cal.activation_reserve_gb) * GB
        free = usable - self.model.weight_bytes
        return max(0, int(free / self.model.bytes_per_kv_token))

    def fits(self, min_tokens: int = 4096) -> bool:
        return self.model.heads % self.tp == 0 and self.model.layers % self.pp == 0 and self.kv_capacity_tokens >= min_tokens

    @property
    def load_time(self) -> float:
        """Seconds to load weights onto the replica's GPUs (in parallel) and warm up."""
        return self.model.weight_bytes / self.gpus / (self.cal.load_gbps * GB) + self.cal.load_fixed_s

    # -- time --------------------------------------------------------------------------
    def layer_time(self, tokens: float) -> float:
        """One decoder layer on one GPU, without attention or communication (what profilers call the MLP/projection ops)."""
        total = 0.0
        for fan_in, fan_out in self._matmuls:
            compute = 2.0 * tokens * fan_in * fan_out / self.flops
            memory = 2.0 * (fan_in * fan_out + tokens * (fan_in + fan_out)) / self.bandwidth
            total += max(compute, memory)
        total += 2.0 * tokens * self._elementwise / self.bandwidth
        return total + 9 * self.cal.kernel_overhead_s

    def allreduce_time(self, message_bytes: float) -> float:
        if self.tp == 1:
            return 0.0
        return self.cal.comm_latency_s + 2.0 * (self.tp - 1) / self.tp * message_bytes / self.link

    def linear_time(self, tokens: int, sequences: int) -> float:
        """Everything in a step that does not depend on context length."""
        m = self.model
        layers = m.layers * self.layer_time(tokens)
        head = max(2.0 * sequences * m.hidden * m.vocab / self.tp / self.flops,
                   2.0 * m.hidden * m.vocab / self.tp / self.bandwidth)
        comm = 2 * m.layers * self.allreduce_time(2.0 * tokens * m.hidden)
        if self.pp > 1:
            comm += (self.pp - 1) * (self.cal.comm_latency_s + 2.0 * tokens * m.hidden / self.link)
        return layers + head + comm + self.cal.step_overhead_s

    def attention_time(self, context_tokens: float, prefill_pairs: float) -> float:
        """Decode: read the KV of ``context_tokens``; prefill: ``prefill_pairs`` query-key pairs."""
        m = self.model
        flops = 4.0 * m.layers * m.heads * m.head_dim * prefill_pairs / self.tp
        return context_tokens * self.kv_read_per_token + flops / (self.gpu.bf16_tflops * 1e12 * self.cal.attention_efficiency)

    def step_time(self, tokens: int, sequences: int, context_tokens: float, prefill_pairs: float = 0.0) -> float:
        key = (tokens, sequences)  # a chunked-prefill step: few distinct shapes, one per (tokens, sequences)
        linear = self._linear_cache.get(key)
        if linear is None:
            linear = self.linear_time(tokens, sequences)
            if len(self._linear_cache) < 1 << 16:
                self._linear_cache[key] = linear
        return linear + self.attention_time(context_tokens, prefill_pairs)

    def decode_coefficients(self, batch: int) -> tuple[float, float]:
        """(A, b) with decode step time = A + b * total context of the batch."""
        a = self._decode_cache.get(batch)
        if a is None:
            a = self._decode_cache[batch] = self.linear_time(batch, batch)
        return a, self.kv_read_per_token

    def request_latency(self, prompt: int, output: int, chunk: int) -> float:
        """Unloaded latency of one request: chunked prefill, then output - 1 decode steps."""
        t, done = 0.0, 0
        while done < prompt:
            n = min(chunk, prompt - done)
            t += self.step_time(n, 1, 0.0, n * (done + (n + 1) / 2))
            done += n
        a, b = self.decode_coefficients(1)
        for i in range(output - 1):
            t += a + b * (prompt + 1 + i)
        return t
