"""How far the simulator's cost model is from measured GPU operator times.

    python benchmarks/cost_model_error.py [--calibration default] [--json]
    python benchmarks/cost_model_error.py --fit       # refit efficiency factors, print TOML

Data: per-layer operator times (projections, MLP, norms, activation, residual add;
attention kernels are not in the files) measured by the Vidur project on A100-80GB and
H100-SXM for Llama-2-7B, Llama-2-70B and Llama-3-8B at tensor-parallel degrees 1-8,
against the number of tokens in the batch (../shared/data/profiling, MIT licence).
A step's measured time is layers x the per-layer sum (+ the embedding); the model's is
layers x ``ReplicaCost.layer_time``. Decode steps: 1-256 tokens (a batch of
sequences); prefill steps: 512 tokens and up (a prompt chunk).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopoiesis.adapters.simulator.costmodel import ReplicaCost, calibration
from autopoiesis.adapters.simulator.hardware import gpu, model

PROFILING = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiling"
GPUS = {"a100": "A100-80GB", "h100": "H100-SXM"}
MODELS = {"Llama-2-7b-hf": "Llama-2-7B", "Llama-2-70b-hf": "Llama-2-70B", "Meta-Llama-3-8B": "Llama-3-8B"}
OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def measurements(root: Path = PROFILING):
    """(gpu, model, tp, tokens, measured step seconds without attention) per distinct point."""
    points = []
    for gdir, gname in GPUS.items():
        for path in sorted((root / gdir).glob("*-mlp.csv")):
            mname = MODELS.get(path.name.removesuffix("-mlp.csv"))
            if mname is None:
                continue
            m = model(mname)
            groups = defaultdict(list)
            with open(path) as f:
                for row in csv.DictReader(f):
                    layer = sum(float(row[f"time_stats.{op}.median"]) for op in OPS)
                    step = (m.layers * layer + float(row["time_stats.emb.median"])) / 1e3
                    groups[(int(row["num_tensor_parallel_workers"]), int(row["num_tokens"]))].append(step)
            for (tp, tokens), values in sorted(groups.items()):
                points.append((gname, mname, tp, tokens, statistics.fmean(values)))
    return points


def errors(points, cal_for):
    out = []
    for gname, mname, tp, tokens, measured in points:
        cost = ReplicaCost(model(mname), gpu(gname), tp=tp, cal=cal_for(gname))
        predicted = cost.model.layers * cost.layer_time(tokens)
        phase = "decode" if tokens <= 256 else "prefill" if tokens >= 512 else None
        out.append({"gpu": gname, "model": mname, "tp": tp, "tokens": tokens, "phase": phase,
                    "measured_ms": measured * 1e3, "predicted_ms": predicted * 1e3,
                    "error": abs(predicted - measured) / measured})
    return out


def summarize(rows, tps=(1, 2, 4)):
    table = {}
    for (gname, mname), group in itertools.groupby(sorted(rows, key=lambda r: (r["gpu"], r["model"])),
                                                   key=lambda r: (r["gpu"], r["model"])):
        group = [r for r in group if r["tp"] in tps]
        for phase in ("prefill", "decode"):
            errs = [r["error"] for r in group if r["phase"] == phase]
            if errs:
                table[(gname, mname, phase)] = (statistics.median(errs), max(errs), len(errs))
    return table


def fit(points, gname):
    """Grid search of the three factors the measurements can see.

    Objective: the mean of the decode and prefill median errors (each phase counts
    equally, though prefill has five times the points), plus a little of the mean
    error. Vectorized over points with numpy: a few seconds.
    """
    import numpy as np

    base = calibration("default", gname)
    mine = [p for p in points if p[0] == gname and p[2] in (1, 2, 4) and (p[3] <= 256 or p[3] >= 512)]
    g = gpu(gname)
    flops, bandwidth = g.bf16_tflops * 1e12, g.hbm_gbps * 1e9
    groups = defaultdict(list)
    for _, mname, tp, tokens, measured in mine:
        groups[(mname, tp)].append((tokens, measured))
    parts = []  # per group: (tokens, measured, compute terms, memory terms, elementwise, layers)
    for (mname, tp), rows in groups.items():
        cost = ReplicaCost(model(mname), g, tp=tp, cal=base)
        n = np.array([r[0] for r in rows], dtype=float)
        measured = np.array([r[1] for r in rows])
        compute = [2.0 * n * i * o / flops for i, o in cost._matmuls]
        memory = [2.0 * (i * o + n * (i + o)) / bandwidth for i, o in cost._matmuls]
        elementwise = 2.0 * n * cost._elementwise / bandwidth
        parts.append((n, measured, compute, memory, elementwise, cost.model.layers))
    decode = np.concatenate([p[0] <= 256 for p in parts])
    best = None
    for ce in np.arange(0.40, 1.001, 0.01):
        for me in np.arange(0.40, 1.001, 0.01):
            for ko in np.arange(0.0, 12.5e-6, 0.5e-6):
                errs = []
                for _n, measured, compute, memory, elementwise, layers in parts:
                    layer = sum(np.maximum(c / ce, m / me) for c, m in zip(compute, memory)) + elementwise / me + 9 * ko
                    errs.append(np.abs(layers * layer - measured) / measured)
                errs = np.concatenate(errs)
                score = (np.median(errs[decode]) + np.median(errs[~decode])) / 2 + 0.1 * errs.mean()
                if best is None or score < best[0]:
                    best = (score, float(ce), float(me), float(ko))
    return best[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", default="default")
    parser.add_argument("--fit", action="store_true", help="fit the factors and print a calibration TOML")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not PROFILING.is_dir():
        sys.exit(f"profiling data not found at {PROFILING}")
    points = measurements()
    if args.fit:
        for gname in GPUS.values():
            ce, me, ko = fit(points, gname)
            print(f"[{gname}]\ncompute_efficiency = {ce:.2f}\nmemory_efficiency = {me:.2f}\nkernel_overhead_s = {ko:.1e}\n")
        return
    try:
        calibration(args.calibration, next(iter(GPUS.values())))  # a wrong name is one line of usage
    except FileNotFoundError as e:
        parser.error(str(e))
    rows = errors(points, lambda g: calibration(args.calibration, g))
    summary = summarize(rows)
    everything = [r["error"] for r in rows if r["tp"] in (1, 2, 4) and r["phase"]]
    overall = {"median_error": statistics.median(everything), "worst_error": max(everything), "points": len(everything)}
    if args.json:
        print(json.dumps({"overall": overall, "by_case": [
            {"gpu": g, "model": m, "phase": p, "median_error": med, "worst_error": worst, "points": n}
            for (g, m, p), (med, worst, n) in summary.items()]}))
        return
    table = Table(title=f"cost model vs measured step times (TP 1, 2, 4; calibration '{args.calibration}')")
    for col in ("GPU", "model", "phase", "points", "median error", "worst error"):
        table.add_column(col, justify="right" if col in ("points", "median error", "worst error") else "left")
    for (g, m, p), (med, worst, n) in summary.items():
        table.add_row(g, m, p, str(n), f"{med:.1%}", f"{worst:.1%}")
    console = Console()
    console.print(table)
    console.print(f"overall: median {overall['median_error']:.1%}, worst {overall['worst_error']:.1%} "
                  f"over {overall['points']} measured points")


if __name__ == "__main__":
    main()
