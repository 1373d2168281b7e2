"""How long one hot-path call holds the serving thread when a program loops inside one C call.

    python benchmarks/one_c_call.py [--isolate] [--limit-s 20] [--memory-gb 4] [--json]

A deadline acts between bytecodes, so a builtin draining an iterator in C runs to its end.
Each case is a deployed ``priority`` that does one such thing, called once through
``HotPath`` (50 ms CPU deadline, the default baseline behind it) in a process of its own,
under an address-space cap so a memory case cannot take the machine. It prints the
seconds the call took and whether it fell back, or that it still had not returned after
``--limit-s``. The first group is closed by the sandbox (docs/sandbox.md, section 4; the
big-integer cases by CPython itself; the fan-outs since map, filter and every C key call
through bytecode), the second is the longest range a program may use, the third is what stays open
in the serving process. ``--isolate`` serves the program from a decision process of its
own (``hot_path(..., isolate=True)``), which closes the third.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from autopoiesis.cli import positive_float

CLOSED = [
    "sum(itertools.count())",
    "sum(itertools.repeat(1))",
    "sum(itertools.cycle([1]))",
    "sum(iter(int, 1))",
    "sum(range(10 ** 12))",
    "max(itertools.product(range(99), repeat=9))",
    "10 ** 10 ** 8",
    "math.factorial(10 ** 7)",
    "max(map(sum, [range(10 ** 6)] * 10 ** 4))",
    "sorted([range(10 ** 6)] * 10 ** 4, key=sum)[0]",
    "functools.reduce(max, map(sum, [range(10 ** 6)] * 10 ** 4))",
    "[xs := [1], xs.extend(map(abs, xs))][0][0]",
    "[xs := [range(10 ** 6)] * 10 ** 4, xs.sort(key=sum)][0]",
]
ALLOWED = [  # the longest range a program may use, drained in C
    "sum(range(10 ** 6))",
    "sorted(range(10 ** 6))[0]",
]
OPEN = [
    "max([list(range(10 ** 6))] * 10 ** 4)[0]",
    "len('x' * 10 ** 9)",
]

CALL = """
import resource, sys, time
cap = int(float(sys.argv[2]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from autopoiesis.adapters.simulator import SimulatorAdapter
from autopoiesis.adapters.simulator.engine import RequestInfo
from autopoiesis.hot_path import hot_path
from autopoiesis.program import Program, replace_function
adapter = SimulatorAdapter("stationary", requests=100)
default = adapter.baselines()["default"]
body = "def priority(request, now):\\n    value = " + sys.argv[1] + "\\n    return request.arrival\\n"
program = Program("import functools\\nimport itertools\\nimport math\\n"
                  + replace_function(default.source, "priority", body))
path = hot_path(program, [default], adapter.slots(), timeout_s=0.05, isolate=sys.argv[3] == "1")
request = RequestInfo(1, 2.5, 10, 0)
start = time.monotonic()
path.priority(request, 3.0)
print(time.monotonic() - start, path.fallbacks["priority"])
path.close()
"""


def one_call(expression: str, limit_s: float, memory_gb: float, isolate: bool = False) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", CALL, expression, str(memory_gb), str(int(isolate))],
                              capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"expression": expression, "seconds": None, "fell_back": None}
    if proc.returncode != 0:
        raise SystemExit(f"one_c_call: {expression!r} failed: {proc.stderr.strip().splitlines()[-1]}")
    seconds, fallbacks = proc.stdout.split()
    return {"expression": expression, "seconds": float(seconds), "fell_back": int(fallbacks) == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-s", type=positive_float, default=20.0, help="seconds before a call counts as held")
    parser.add_argument("--memory-gb", type=positive_float, default=4.0, help="address-space cap of each call's process")
    parser.add_argument("--isolate", action="store_true", help="serve the program from a decision process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    groups = {"closed": CLOSED, "allowed": ALLOWED, "open": OPEN}
    results = {group: [] for group in groups}
    for group, cases in groups.items():
        for expression in cases:
            result = one_call(expression, args.limit_s, args.memory_gb, args.isolate)
            results[group].append(result)
            if not args.json:
                took = (f"held past {args.limit_s:g} s" if result["seconds"] is None else
                        f"{result['seconds']:.3f} s, {'fell back' if result['fell_back'] else 'answered'}")
                print(f"{group:7}  {expression:45}  {took}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
