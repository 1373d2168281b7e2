"""What a vLLM server's prefill and decode cost on this machine, for each --dtype.

    python benchmarks/vllm_step_times.py MODEL [--dtypes bfloat16,float32] [--prompts 32,256,1024]
                                         [--repeats 3] [--vllm-args "..."] [--json]

Starts one server of MODEL (a local directory, as ``--vllm-launch`` takes it) per dtype with
the vLLM adapter's own launcher, so ``AUTOPOIESIS_VLLM_PYTHON`` names vLLM's python, and
times requests on it one at a time:

- prefill: a prompt of N random token ids with ``max_tokens`` 1 (random, so that no prompt
  finds another's prefix in vLLM's prefix cache); the fastest of ``--repeats``;
- decode: the same prompt with 65 tokens to generate against 1, over 64.

Why it matters: the twin models a step as a prefill line and a decode line, and which one
dominates decides what a queue order can win. A GPU prefills a thousand-token prompt in
the time of a few decode steps; on a CPU without bf16 instructions vLLM's bfloat16
prefill is several times slower than float32's, so a CPU test fleet's workload can be
prefill-bound where a GPU's would not be. Each dtype takes one server start (1.5 min on
two cores) and a few seconds per prompt length.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from autopoiesis.adapters.base import AdapterError
from autopoiesis.adapters.vllm import servers

DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")


def complete(url: str, model: str, prompt: list[int], max_tokens: int) -> float:
    """Seconds one non-streamed completion takes, from send to the whole answer."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
                       "ignore_eos": True, "temperature": 0.0}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
    except urllib.error.HTTPError as e:  # say what the server refused (a prompt past --max-model-len)
        raise OSError(f"the server answered {e.code}: {e.read().decode(errors='replace')[:300]}") from None
    return time.perf_counter() - start


def measure(model: str, dtype: str, prompts: list[int], repeats: int, extra: str, log_dir: Path,
            python: str | None) -> dict:
    started = time.perf_counter()
    fleet = servers.launch(model, 1, log_dir / dtype, python, extra_args=f"{extra} --dtype {dtype}", served_name="m")
    try:
        servers.wait_ready(fleet)
        ready_s = time.perf_counter() - started
        url, rng = fleet[0].url, random.Random(0)

        def prompt(n):
            return [rng.randrange(3, 300) for _ in range(n)]

        complete(url, "m", prompt(16), 2)  # the first request pays one-off warm-ups
        prefill = {n: min(complete(url, "m", prompt(n), 1) for _ in range(repeats)) for n in prompts}
        n = prompts[0]
        decode = min((complete(url, "m", p, 65) - complete(url, "m", p, 1)) / 64
                     for p in (prompt(n) for _ in range(repeats)))
    finally:
        servers.stop(fleet)
    return {"dtype": dtype, "ready_s": ready_s, "decode_s_per_token": decode,
            "prefill_s": {str(k): v for k, v in prefill.items()},
            "prefill_s_per_token": {str(k): v / k for k, v in prefill.items()}}


def _numbers(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers of at least 1, got {text!r}")
    return values


def _dtypes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in DTYPES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"unknown dtype {', '.join(unknown) or text!r} (one of {', '.join(DTYPES)})")
    return values


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a local model directory (tests/vllm_tiny_model.py makes one)")
    parser.add_argument("--dtypes", type=_dtypes, default=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=_numbers, default=[32, 256, 1024], help="prompt lengths in tokens")
    parser.add_argument("--repeats", type=_at_least_one, default=3)
    parser.add_argument("--vllm-args", default="--max-num-seqs 2 --max-model-len 2048",
                        help="further vLLM arguments (--dtype comes from --dtypes)")
    parser.add_argument("--vllm-python", default=os.environ.get("AUTOPOIESIS_VLLM_PYTHON"),
                        help="the python that has vLLM (default: $AUTOPOIESIS_VLLM_PYTHON, else this one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not Path(args.model).expanduser().is_dir():
        parser.error(f"no model directory at {args.model}")
    if "--dtype" in args.vllm_args.split():
        parser.error("--vllm-args must not set --dtype: --dtypes names those to compare")
    results = []
    with tempfile.TemporaryDirectory(prefix="vllm-step-times-") as tmp:
        for dtype in args.dtypes:
            print(f"{dtype}: starting a server ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(args.model, dtype, args.prompts, args.repeats, args.vllm_args, Path(tmp),
                                       args.vllm_python))
            except (AdapterError, OSError) as e:
                print(f"{dtype}: {e}", file=sys.stderr)
                return 1
    if args.json:
        print(json.dumps(results))
        return 0
    lengths = [str(n) for n in args.prompts]
    print(f"{'dtype':<10} {'ready s':>8}  " + "  ".join(f"{'prefill ' + n + ' ms/tok':>20}" for n in lengths)
          + f"  {'decode ms/tok':>14}  {'decode steps per ' + lengths[-1] + '-token prefill':>34}")
    for r in results:
        per_token = r["prefill_s_per_token"]
        print(f"{r['dtype']:<10} {r['ready_s']:>8.1f}  " + "  ".join(f"{per_token[n] * 1e3:>20.2f}" for n in lengths)
              + f"  {r['decode_s_per_token'] * 1e3:>14.1f}  {r['prefill_s'][lengths[-1]] / r['decode_s_per_token']:>34.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
