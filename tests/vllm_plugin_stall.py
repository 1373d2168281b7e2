"""Run by ``test_vllm_adapter`` in vLLM's environment: the in-engine plugin's program in its
decision process, against a stall, a slow program and one C call that never ends.

    python tests/vllm_plugin_stall.py PLUGIN_DIR SANDBOX_DIR WORK_DIR

Publishes a program per case, asks ``QueueOrder`` for priorities and prints the results as
JSON. "stopped": the program's process is stopped (SIGSTOP, as a frozen machine would leave
it) while the engine asks; the engine waits the stall cap (lowered to 0.2 s), serves that
request FCFS, and keeps the program, whose next answer comes once it runs again. "slow": the
program computes past the 50 ms deadline. "fanout": one C call (``max`` comparing 10^5
million-item lists) that no deadline between bytecodes can stop: the kernel ends its process at 0.5 s
of CPU, and the engine's thread computed none of it.
"""

import json
import os
import signal
import sys
import time
import types

sys.path.insert(0, sys.argv[1])
os.environ["AUTOPOIESIS_SANDBOX_DIR"] = sys.argv[2]
import autopoiesis_scheduler as plugin  # noqa: E402 - found through the path set above

SPIN = "def priority(request, now):\n    x = i = 0\n    while i < {n}:\n        x += i\n        i += 1\n    return 1.0\n"
FANOUT = "def priority(request, now):\n    return float(max([[0] * 10**6] * 10**5)[0])\n"
REQUEST = types.SimpleNamespace(arrival_time=time.time(), num_prompt_tokens=10, num_output_tokens=0, priority=0)


def publish(case, source):
    path = os.path.join(sys.argv[3], f"{case}.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "program": case, "source": source, "epoch_unix": time.time()}, f)
    return plugin.QueueOrder(path)


def status(order):
    order.write_status()  # the counts of plain calls; the status thread would write them within 50 ms
    with open(order._status_path) as f:
        return {k: v for k, v in json.load(f).items() if k in ("calls", "fallbacks", "stalls", "error")}


def timed(order):
    """(key, real seconds, the engine thread's CPU seconds) of one request."""
    cpu, wall = time.thread_time(), time.perf_counter()
    _, key = order(REQUEST)  # (order epoch, key)
    return key, round(time.perf_counter() - wall, 3), round(time.thread_time() - cpu, 4)


def stopped():
    plugin.STALL_CAP_S = 0.2
    order = publish("stopped", SPIN.format(n=1000))
    plugin.STALL_CAP_S = 1.0
    first = order(REQUEST)[1]
    pid = order._policy.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        key, took, _ = timed(order)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.1)
    return {"first": first, "stopped": key, "took_s": took, "after": order(REQUEST)[1], **status(order)}


def slow():
    order = publish("slow", SPIN.format(n=10**9))
    return {"first": order(REQUEST)[1], "second": order(REQUEST)[1], **status(order)}


def fanout():
    """Ask until the program is dropped: on a busy machine the call may be given up (a stall)
    before its process has computed the 0.5 s that ends it."""
    order = publish("fanout", FANOUT)
    pid = order._policy.pid
    keys, took, cpu = [], 0.0, 0.0
    while not status(order)["error"] and took < 30:
        key, t, c = timed(order)
        keys.append(key)
        took, cpu = took + t, cpu + c
        time.sleep(0.05)
    return {"keys": keys, "took_s": round(took, 3), "cpu_s": round(cpu, 4), "after": order(REQUEST)[1],
            "pid_alive": _alive(pid), **status(order)}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # ended and reaped
        return False
    return True


print(json.dumps({"stopped": stopped(), "slow": slow(), "fanout": fanout()}))
