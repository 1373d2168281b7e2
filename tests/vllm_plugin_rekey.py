"""Run by ``test_vllm_adapter`` in vLLM's environment: the in-engine plugin keys its backlog
again when a program is loaded, all or nothing.

    python tests/vllm_plugin_rekey.py PLUGIN_DIR SANDBOX_DIR WORK_DIR

Real vLLM ``Request`` objects join a real priority queue through ``PolicyScheduler``'s
``add_request`` (the scheduler is built bare: only the parts those two steps use). Each
case publishes programs and prints, as JSON, the order in which the queue gives the
requests back and the plugin's status.
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
SHORTEST_FIRST = "def priority(request, now):\n    return float(request.prompt_tokens)\n"
FAILS_ON_30 = "def priority(request, now):\n    return 1.0 / (request.prompt_tokens - 30)\n"
PROMPTS = [50, 10, 40, 20, 30]  # arrival order; the router's own priority is 5, 4, 3, 2, 1


def publish(path, version, source):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": version, "program": f"p{version}", "source": source, "epoch_unix": time.time()}, f)
    os.replace(tmp, path)
    os.utime(path, ns=(version * 10**9, version * 10**9))  # a new modification time however coarse the clock


def scheduler(path):
    """A ``PolicyScheduler`` with only what ``add_request`` and ``_rekey`` use."""
    os.environ["AUTOPOIESIS_POLICY_FILE"] = path
    s = plugin.PolicyScheduler.__new__(plugin.PolicyScheduler)
    s.policy = SchedulingPolicy.PRIORITY
    s.waiting, s.kv_holding_waiting = create_request_queue(s.policy), create_request_queue(s.policy)
    s.running, s.requests, s.deferred_waiting = [], {}, set()
    s.spec_decode_metrics_level, s.connector, s.log_stats = "none", None, False
    s._order = plugin.QueueOrder(path)
    return s


def case(name, sources, budget=plugin.REKEY_BUDGET_S):
    """Queue PROMPTS under ``sources[0]``, load each later source in turn and key the backlog again."""
    path = os.path.join(sys.argv[3], f"{name}.json")
    publish(path, 1, sources[0])
    s = scheduler(path)
    now = time.time()
    for i, n in enumerate(PROMPTS):
        s.add_request(Request(f"r{i}", list(range(1, n + 1)), SamplingParams(max_tokens=4), None,
                              arrival_time=now + i, priority=len(PROMPTS) - i))
    keys = [[r.priority for r in sorted(s.requests.values(), key=lambda r: r.request_id)]]
    plugin.REKEY_BUDGET_S = budget
    for version, source in enumerate(sources[1:], start=2):
        publish(path, version, source)
        assert s._order.changed()
        s._rekey()
        keys.append([r.priority for r in sorted(s.requests.values(), key=lambda r: r.request_id)])
    order = []
    while s.waiting:
        order.append(s.waiting.pop_request().num_prompt_tokens)
    with open(f"{path}.status-{os.getpid()}") as f:
        status = json.load(f)
    return {"order": order, "keys": keys, "changed_again": s._order.changed(),
            **{k: status[k] for k in ("version", "calls", "fallbacks", "error", "rekeys", "rekeyed",
                                      "rekeys_given_up")}}


print(json.dumps({
    "rekeyed": case("rekeyed", [OLDEST_FIRST, SHORTEST_FIRST]),
    "withdrawn": case("withdrawn", [OLDEST_FIRST, SHORTEST_FIRST, ""]),
    "failing": case("failing", [OLDEST_FIRST, FAILS_ON_30]),
    "over_budget": case("over_budget", [OLDEST_FIRST, SHORTEST_FIRST], budget=-1.0),
}))
