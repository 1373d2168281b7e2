"""What the in-engine plugin adds to each request vLLM's scheduler takes in.

    $AUTOPOIESIS_VLLM_PYTHON benchmarks/plugin_overhead.py [--requests 2000] [--json]

Run with vLLM's Python (the plugin subclasses vLLM's scheduler; autopoiesis need not be
installed there, the plugin loads its sandbox by path). Times ``QueueOrder``, what
``PolicyScheduler.add_request`` calls once per new request, in microseconds per request
(the best of three runs of ``--requests``), for:

- no program published: the plugin's own bookkeeping;
- a one-line program (``request.prompt_tokens``) answering from its decision process, the
  status file written by the plugin's status thread (at most every 50 ms), as it runs;
- the same with the status file written on every request, as the plugin did before.

The difference between the last two is what the status thread saves vLLM's scheduler
thread per request; the second minus the first is the round trip to the decision process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = "def priority(request, now):\n    return request.prompt_tokens\n"


def per_request_us(order, requests: int, write_each: bool) -> float:
    request = types.SimpleNamespace(arrival_time=time.time(), num_prompt_tokens=10, num_output_tokens=0, priority=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(requests):
            order(request)
            if write_each:
                order.write_status()
        best = min(best, time.perf_counter() - start)
    return round(best / requests * 1e6, 1)


def measure(requests: int) -> dict[str, float]:
    sys.path.insert(0, os.path.join(ROOT, "adapters", "vllm"))
    os.environ["AUTOPOIESIS_SANDBOX_DIR"] = os.path.join(ROOT, "autopoiesis")
    import autopoiesis_scheduler as plugin

    folder = tempfile.mkdtemp(prefix="plugin-overhead-")
    none = plugin.QueueOrder("")
    path = os.path.join(folder, "policy.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "program": "prompt_tokens", "source": PROGRAM, "epoch_unix": time.time()}, f)
    order = plugin.QueueOrder(path)
    if order._fn is None:
        raise SystemExit(f"plugin_overhead: the program did not load: {order._error}")
    order(types.SimpleNamespace(arrival_time=time.time(), num_prompt_tokens=1, num_output_tokens=0, priority=0))
    return {"no_program_us": per_request_us(none, requests, False),
            "program_status_thread_us": per_request_us(order, requests, False),
            "program_status_each_request_us": per_request_us(order, requests, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error(f"argument --requests: must be at least 1, got {args.requests}")
    try:
        import vllm  # noqa: F401
    except ImportError:
        parser.error(f"{sys.executable} has no vllm; run it with vLLM's Python "
                     "($AUTOPOIESIS_VLLM_PYTHON benchmarks/plugin_overhead.py)")
    result = measure(args.requests)
    if args.json:
        print(json.dumps(result))
        return
    print(f"per request, best of 3 x {args.requests} (us):")
    print(f"  no program published                     {result['no_program_us']:8.1f}")
    print(f"  program, status written by its thread    {result['program_status_thread_us']:8.1f}")
    print(f"  program, status written on each request  {result['program_status_each_request_us']:8.1f}")


if __name__ == "__main__":
    main()
