"""What the serving plane pays per policy decision for running a deployed program safely.

    python benchmarks/decision_overhead.py [--calls 200000] [--json]

For the simulator's ``dispatch`` (over 8 replicas) and ``priority`` slots, microseconds per
call of: the baseline function called directly (plain Python, trusted); the same source
compiled by the sandbox (restricted namespace, result checked); and through ``HotPath``,
the deployed form (fallback on error), without and with its per-call deadline (50 ms of CPU
time, looked at by SIGALRM); and through ``HotPath`` with the program in a decision process
of its own (``--isolate``, the default for the engine and vLLM adapters), where each call
is a round trip through a pipe (measured over a fiftieth of ``--calls``).
"""

from __future__ import annotations

import argparse
import json
import time

from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.adapters.simulator.engine import RequestInfo
from autopoiesis.adapters.simulator.slots import _ExampleReplica
from autopoiesis.decision_process import IsolatedPolicy
from autopoiesis.hot_path import HotPath
from autopoiesis.sandbox import compile_policy
from autopoiesis.cli import positive_int


def per_call_us(fn, args, calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def measure(calls: int) -> dict[str, dict[str, float]]:
    adapter = SimulatorAdapter("stationary")
    program = adapter.baselines()["default"]
    plain: dict = {}
    exec(compile(program.source, "<baseline>", "exec"), plain)  # trusted: a shipped baseline
    sandboxed = compile_policy(program.source, adapter.slots(), program.id)
    fallback = compile_policy(program.source, adapter.slots(), program.id)
    checks = {"dispatch": lambda r, a: 0 <= r < len(a[1])}
    untimed = HotPath(sandboxed, [fallback], checks, timeout_s=None)
    timed = HotPath(sandboxed, [fallback], checks, timeout_s=0.05)
    isolated = HotPath(IsolatedPolicy(program.source, adapter.slots(), program.id), [fallback], checks)

    replicas = [_ExampleReplica(i, (i * 7) % 11, 400.0 + 100 * i) for i in range(8)]
    request = RequestInfo(1, 3.5, 1200, 0)
    cases = {"dispatch": (request, replicas, 10.0), "priority": (request, 10.0)}
    out = {}
    for slot, call_args in cases.items():
        direct = per_call_us(plain[slot], call_args, calls)
        row = {
            "direct_us": direct,
            "sandboxed_us": per_call_us(sandboxed.functions[slot], call_args, calls),
            "hot_path_us": per_call_us(untimed.functions[slot], call_args, calls),
            "hot_path_deadline_us": per_call_us(timed.functions[slot], call_args, calls),
            "isolated_us": per_call_us(isolated.functions[slot], call_args, max(1, calls // 50)),
        }
        assert not isolated.fallbacks, list(isolated.errors)  # every call answered by the decision process
        row["added_us"] = row["hot_path_deadline_us"] - direct
        out[slot] = row
    isolated.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=positive_int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = measure(args.calls)
    if args.json:
        print(json.dumps(out))
        return
    for slot, row in out.items():
        print(f"{slot:9s} direct {row['direct_us']:.2f} us, sandboxed {row['sandboxed_us']:.2f} us, "
              f"hot path {row['hot_path_us']:.2f} us, with deadline {row['hot_path_deadline_us']:.2f} us "
              f"(+{row['added_us']:.2f} us per decision); in a decision process {row['isolated_us']:.1f} us")


if __name__ == "__main__":
    main()
