"""How long a deployment holds the thread that serves, in milliseconds.

    python benchmarks/deployment_hold.py [--deployments 12] [--json]
    $AUTOPOIESIS_VLLM_PYTHON benchmarks/deployment_hold.py --plugin [--deployments 12] [--json]

The vLLM adapter deploys on the thread that runs its router, between two observations,
and the in-engine plugin loads a published program on vLLM's scheduler thread, before a
scheduling step: while either works, nothing is routed or scheduled. By default this
times what ``VLLMAdapter.deploy`` does there with isolated programs (the default): build
the new hot path (each program compiled in a decision process taken from the spares) and
close the replaced one. With ``--plugin`` (vLLM's Python: the plugin subclasses vLLM's
scheduler) it times ``QueueOrder.look()`` right after a publication: read the file, start
the program in a decision process, end the replaced one's. One deployment a second,
alternating two programs; each figure is the median over ``--deployments``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIORITIES = ("def priority(request, now):\n    return request.arrival\n",
              "def priority(request, now):\n    return -float(request.prompt_tokens)\n")


def _median(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2], 1)


def router(deployments: int) -> dict[str, float]:
    from autopoiesis import decision_process
    from autopoiesis.adapters.vllm import VLLMAdapter
    from autopoiesis.adapters.vllm.slots import DISPATCH_BASELINES
    from autopoiesis.hot_path import hot_path
    from autopoiesis.program import Program

    slots = VLLMAdapter(urls=["http://127.0.0.1:1"]).slots()
    programs = [Program(DISPATCH_BASELINES["least_outstanding"].strip() + "\n\n\n" + p) for p in PRIORITIES]
    decision_process.start_spares(wait=True)  # as the adapter's start does
    current = hot_path(programs[0], [], slots, isolate=True)
    build, close = [], []
    for i in range(deployments):
        time.sleep(1.0)  # the spares are up again, as between two evolutions
        start = time.perf_counter()
        new = hot_path(programs[(i + 1) % 2], [], slots, isolate=True)
        built = time.perf_counter()
        current.close()
        build.append(1e3 * (built - start))
        close.append(1e3 * (time.perf_counter() - built))
        current = new
    current.close()
    return {"build_ms": _median(build), "close_ms": _median(close),
            "deploy_ms": _median([b + c for b, c in zip(build, close)])}


def plugin(deployments: int) -> dict[str, float]:
    sys.path.insert(0, os.path.join(ROOT, "adapters", "vllm"))
    os.environ["AUTOPOIESIS_SANDBOX_DIR"] = os.path.join(ROOT, "autopoiesis")
    import autopoiesis_scheduler

    path = os.path.join(tempfile.mkdtemp(prefix="deployment-hold-"), "policy.json")

    def publish(version: int) -> None:
        with open(path + ".tmp", "w") as f:
            json.dump({"version": version, "program": f"p{version}", "source": PRIORITIES[version % 2],
                       "epoch_unix": time.time()}, f)
        os.replace(path + ".tmp", path)
        os.utime(path, ns=(version * 10**9, version * 10**9))  # a new modification time, however coarse

    publish(1)
    order = autopoiesis_scheduler.QueueOrder(path)
    if order._fn is None:
        raise SystemExit(f"deployment_hold: the program did not load: {order._error}")
    loads = []
    for version in range(2, deployments + 2):
        time.sleep(1.0)
        publish(version)
        order._checked_at = 0.0  # due for a look now, as after 50 ms
        start = time.perf_counter()
        order.look()
        loads.append(1e3 * (time.perf_counter() - start))
        if order._version != version:
            raise SystemExit(f"deployment_hold: publication {version} was not loaded: {order._error}")
    return {"load_ms": _median(loads), "most_ms": round(max(loads), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugin", action="store_true", help="time the in-engine plugin's load (vLLM's Python)")
    parser.add_argument("--deployments", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.deployments < 1:
        parser.error("--deployments must be at least 1")
    result = plugin(args.deployments) if args.plugin else router(args.deployments)
    if args.json:
        print(json.dumps(result))
    elif args.plugin:
        print(f"the plugin's load of a published program holds vLLM's scheduler thread {result['load_ms']} ms "
              f"(median of {args.deployments}; at most {result['most_ms']} ms)")
    else:
        print(f"a deployment holds the router's thread {result['deploy_ms']} ms (median of {args.deployments}): "
              f"building the isolated hot path {result['build_ms']} ms, closing the replaced one {result['close_ms']} ms")


if __name__ == "__main__":
    main()
