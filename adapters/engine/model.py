"""A small decoder-only transformer in torch and the executor that runs the engine's steps on it.

The weights are random (nothing is downloaded) and decoding is greedy, so the tokens mean
nothing; the work is real: a prefill runs the prompt through every layer and fills the
request's KV slot, a decode step attends every running sequence over its own cached
context in one batch. Runs on ``cpu`` or ``cuda``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    vocab: int = 2048
    hidden: int = 256
    layers: int = 4
    heads: int = 4  # head size hidden / heads


class TinyLM(torch.nn.Module):
    """Pre-norm attention + MLP blocks, learned positions, output tied to the embedding."""

    def __init__(self, shape: Shape, max_len: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        h = shape.hidden
        self.shape, self.head_dim = shape, h // shape.heads
        self.embed = torch.nn.Embedding(shape.vocab, h)
        self.position = torch.nn.Embedding(max_len, h)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"norm1": torch.nn.LayerNorm(h), "qkv": torch.nn.Linear(h, 3 * h),
                                 "out": torch.nn.Linear(h, h), "norm2": torch.nn.LayerNorm(h),
                                 "up": torch.nn.Linear(h, 4 * h), "down": torch.nn.Linear(4 * h, h)})
            for _ in range(shape.layers))
        self.norm = torch.nn.LayerNorm(h)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, h) -> (B, heads, T, head_dim)
        b, t, _ = x.shape
        return x.view(b, t, self.shape.heads, self.head_dim).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                cache_k: torch.Tensor, cache_v: torch.Tensor) -> torch.Tensor:
        """Logits of each row's last position; writes the rows' keys and values into their KV slots.

        tokens, positions: (B, T). slots: (B,), each row's slot in cache_k/v, which are
        (layers, slots, heads, max_len, head_dim). A query at position p sees its row's keys 0..p.
        """
        b, t = tokens.shape
        x = self.embed(tokens) + self.position(positions)
        span = int(positions.max()) + 1
        mask = torch.arange(span, device=tokens.device).view(1, 1, 1, span) <= positions.view(b, 1, t, 1)
        rows = slots.view(b, 1)
        for i, blk in enumerate(self.blocks):
            q, k, v = blk["qkv"](blk["norm1"](x)).chunk(3, dim=-1)
            q = self._split(q)
            cache_k[i][rows, :, positions] = k.view(b, t, self.shape.heads, self.head_dim)
            cache_v[i][rows, :, positions] = v.view(b, t, self.shape.heads, self.head_dim)
            keys, values = cache_k[i][slots, :, :span], cache_v[i][slots, :, :span]
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + blk["out"](attn.transpose(1, 2).reshape(b, t, -1))
            x = x + blk["down"](F.gelu(blk["up"](blk["norm2"](x))))
        return self.norm(x[:, -1]) @ self.embed.weight.T


class TorchExecutor:
    """Runs the engine's steps on ``TinyLM``; each step's wall-clock seconds are its cost.

    KV slots: one per possible running request (``max_batch``), each ``max_len`` tokens.
    """

    def __init__(self, shape: Shape, max_batch: int, max_len: int, device: str = "cpu", seed: int = 0,
                 threads: int = 1):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device '{device}' asked for, but torch sees no CUDA GPU")
        try:
            self.device, self.max_len = torch.device(device), max_len
        except RuntimeError as e:  # torch's own words, after the option that caused them
            raise RuntimeError(f"device '{device}': {e}") from None
        if self.device.type == "cpu":
            torch.set_num_threads(threads)  # the evolution plane's workers need the other cores
        self.model = TinyLM(shape, max_len, seed).to(self.device).eval()
        hd = shape.hidden // shape.heads
        size = (shape.layers, max_batch, shape.heads, max_len, hd)
        self.k = torch.zeros(size, device=self.device)
        self.v = torch.zeros(size, device=self.device)
        self.free = list(range(max_batch - 1, -1, -1))
        self.last: dict[int, int] = {}  # slot -> the token it decodes from next
        self.rng = torch.Generator().manual_seed(seed)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def step(self, prefill: Sequence, decode: Sequence) -> float:
        start = time.perf_counter()
        for r in prefill:  # one prompt at a time: no padding, each prefill costs its own length
            r.slot = self.free.pop()
            prompt = torch.randint(self.model.shape.vocab, (1, r.prompt_tokens), generator=self.rng).to(self.device)
            positions = torch.arange(r.prompt_tokens, device=self.device).view(1, -1)
            logits = self.model(prompt, positions, torch.tensor([r.slot], device=self.device), self.k, self.v)
            self.last[r.slot] = int(logits.argmax(-1))
        if decode:
            slots = torch.tensor([r.slot for r in decode], device=self.device)
            positions = torch.tensor([[r.prompt_tokens + r.generated - 1] for r in decode], device=self.device)
            tokens = torch.tensor([[self.last[r.slot]] for r in decode], device=self.device)
            for r, token in zip(decode, self.model(tokens, positions, slots, self.k, self.v).argmax(-1).tolist()):
                self.last[r.slot] = token
        self._sync()
        return time.perf_counter() - start

    def release(self, request) -> None:
        if request.slot >= 0:
            self.last.pop(request.slot, None)
            self.free.append(request.slot)
            request.slot = -1


def calibrate(executor: TorchExecutor, config, repeats: int = 5) -> list[tuple[tuple[float, ...], float]]:
    """Time prefills and decode steps across the shapes the engine will meet: (shape, seconds) pairs."""
    from .engine import Request, shape

    prompts = sorted({max(1, min(config.max_prompt, n)) for n in (16, 64, 256, config.max_prompt // 2)})
    batches = sorted({max(1, min(config.max_batch, n)) for n in (1, 2, 4, config.max_batch // 2, config.max_batch)})
    contexts = sorted({max(2, min(executor.max_len - 1, n)) for n in (16, 64, 256, executor.max_len // 2,
                                                                    executor.max_len - 1)})
    steps = []
    for _ in range(repeats):
        for n in prompts:
            r = Request(-1, 0.0, n, 2)
            steps.append((shape([r], []), executor.step([r], [])))
            executor.release(r)
        for b in batches:
            for ctx in contexts:
                rs = [Request(-1, 0.0, ctx, 2) for _ in range(b)]
                for r in rs:
                    r.slot, r.generated = executor.free.pop(), 1
                    executor.last[r.slot] = 0
                steps.append((shape([], rs), executor.step([], rs)))
                for r in rs:
                    executor.release(r)
    return steps
