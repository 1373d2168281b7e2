"""Run by ``test_vllm_adapter`` in vLLM's environment: the in-engine plugin retires a program
whose state grows with its calls.

    python tests/vllm_plugin_state.py PLUGIN_DIR SANDBOX_DIR WORK_DIR

Publishes a program that remembers every request, with the state limit lowered to 1000
items and measured every 10 requests (by its decision process), asks ``QueueOrder`` for 700
priorities and prints, as JSON, how many the program answered, the fallbacks, the
status's error, and how long after the last call the status file held all 700 calls (the
status thread's write).
"""

import json
import os
import sys
import time
import types

sys.path.insert(0, sys.argv[1])
os.environ["AUTOPOIESIS_SANDBOX_DIR"] = sys.argv[2]
import autopoiesis_scheduler as plugin  # noqa: E402 - found through the path set above

REMEMBER = "SEEN = {}\ndef priority(request, now):\n    SEEN[request.id] = now\n    return 1.0\n"

sandbox = plugin._sandbox()[0]  # the limit is read at publication and sent to the program's process
sandbox.STATE_LIMIT = 1000
plugin.STATE_CHECK_EVERY = 10
path = os.path.join(sys.argv[3], "remember.json")
with open(path, "w") as f:
    json.dump({"version": 1, "program": "remember", "source": REMEMBER, "epoch_unix": time.time()}, f)
order = plugin.QueueOrder(path)
keys = []
for _ in range(700):
    request = types.SimpleNamespace(arrival_time=time.time(), num_prompt_tokens=10, num_output_tokens=0, priority=0)
    keys.append(order(request)[1])
waited = 0.0  # the retirement was written at once; the later calls' counts by the status thread
while True:
    with open(order._status_path) as f:
        status = json.load(f)
    if status["calls"] == len(keys) or waited > 10:
        break
    time.sleep(0.01)
    waited += 0.01
print(json.dumps({"answered": keys.count(1.0), "fallbacks": status["fallbacks"], "calls": status["calls"],
                  "error": status["error"], "counts_written_within_s": round(waited, 2)}))
