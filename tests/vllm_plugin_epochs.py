"""Run by ``test_vllm_adapter`` in vLLM's environment: after a change of program the in-engine
plugin serves its backlog first, in the order it had, then the later arrivals; after a
program with the same ``priority``, one queue of both.

    python tests/vllm_plugin_epochs.py PLUGIN_DIR SANDBOX_DIR WORK_DIR

Real vLLM ``Request`` objects join a real priority queue through ``PolicyScheduler``'s
``add_request`` (the scheduler is built bare: only the parts that step uses). Each case
queues requests under one program, publishes the next, queues more, and prints, as JSON,
the order in which the queue gives the requests back and the plugin's status.
"""

import json
import os
import sys
import time

sys.path.insert(0, sys.argv[1])
os.environ["AUTOPOIESIS_SANDBOX_DIR"] = sys.argv[2]
import autopoiesis_scheduler as plugin  # noqa: E402 - found through the path set above
from vllm import SamplingParams  # noqa: E402
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue  # noqa: E402
from vllm.v1.request import Request  # noqa: E402

plugin.CHECK_EVERY_S = 0.0  # every look reads the file: the cases publish faster than 50 ms apart
OLDEST_FIRST = "def priority(request, now):\n    return request.arrival\n"
LONGEST_FIRST = "def priority(request, now):\n    return -float(request.prompt_tokens)\n"  # keys < any arrival
LONGEST_FIRST_DOCUMENTED = ('def priority(request, now):\n    """Longest prompt first."""\n'
                            "    return -float(request.prompt_tokens)\n")  # the same order: one queue
FAILS_ON_30 = "def priority(request, now):\n    return 1.0 / (request.prompt_tokens - 30)\n"
BACKLOG = [50, 10, 40, 20, 30]  # prompt lengths in arrival order
LATER = [30, 60, 5]  # arrive after the change; their own (router's) priority is -1, below the backlog's


def publish(path, version, source):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": version, "program": f"p{version}" if source else "", "source": source,
                   "epoch_unix": time.time()}, f)
    os.replace(tmp, path)
    os.utime(path, ns=(version * 10**9, version * 10**9))  # a new modification time however coarse the clock


def scheduler(path):
    """A ``PolicyScheduler`` with only what ``add_request`` uses."""
    os.environ["AUTOPOIESIS_POLICY_FILE"] = path
    s = plugin.PolicyScheduler.__new__(plugin.PolicyScheduler)
    s.policy = SchedulingPolicy.PRIORITY
    s.waiting, s.kv_holding_waiting = create_request_queue(s.policy), create_request_queue(s.policy)
    s.running, s.requests, s.deferred_waiting = [], {}, set()
    s.spec_decode_metrics_level, s.connector, s.log_stats = "none", None, False
    s._order = plugin.QueueOrder(path)
    return s


def case(name, first, then):
    """Queue BACKLOG under ``first`` (None: nothing published), publish ``then``, queue LATER."""
    path = os.path.join(sys.argv[3], f"{name}.json")
    if first is not None:
        publish(path, 1, first)
    s = scheduler(path)
    now = time.time()
    for i, n in enumerate(BACKLOG):
        s.add_request(Request(f"b{i}", list(range(1, n + 1)), SamplingParams(max_tokens=4), None,
                              arrival_time=now + i, priority=len(BACKLOG) - i))
    publish(path, 2, then)
    for i, n in enumerate(LATER):
        s.add_request(Request(f"l{i}", list(range(1, n + 1)), SamplingParams(max_tokens=4), None,
                              arrival_time=now + 10 + i, priority=-1))
    order = []
    while s.waiting:
        order.append(s.waiting.pop_request().num_prompt_tokens)
    s._order.write_status()  # the counts of plain calls; the status thread would write them within 50 ms
    with open(f"{path}.status-{os.getpid()}") as f:
        status = json.load(f)
    return {"order": order, **{k: status[k] for k in ("version", "calls", "fallbacks", "error", "order_epoch")}}


print(json.dumps({
    "swapped": case("swapped", OLDEST_FIRST, LONGEST_FIRST),
    "kept": case("kept", LONGEST_FIRST, LONGEST_FIRST_DOCUMENTED),
    "withdrawn": case("withdrawn", OLDEST_FIRST, ""),
    "failing": case("failing", OLDEST_FIRST, FAILS_ON_30),
    "first": case("first", None, LONGEST_FIRST),
}))
