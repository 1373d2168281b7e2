"""The vLLM adapter's two policy slots: which replica takes a request, and in what order a queue runs."""

from __future__ import annotations

from types import SimpleNamespace

from autopoiesis.program import PolicySlot, Primitives

DISPATCH_BASELINES = {
    "round_robin": '''def dispatch(request, replicas, now):
    """Round-robin: the replica that has been sent the fewest requests so far."""
    return min(range(len(replicas)), key=lambda i: replicas[i].assigned)
''',
    "least_outstanding": '''def dispatch(request, replicas, now):
    """Least outstanding requests (sent by the router and not finished)."""
    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)
''',
    "least_kv": '''def dispatch(request, replicas, now):
    """Least KV-cache use as last scraped, then fewest outstanding."""
    return min(range(len(replicas)), key=lambda i: (replicas[i].kv_used_fraction, replicas[i].outstanding))
''',
}

PRIORITY_BASELINES = {
    "fcfs": '''def priority(request, now):
    """First come, first served (what vLLM does by default)."""
    return request.arrival
''',
    "shortest_prompt": '''def priority(request, now):
    """Shortest prompt first (prefill cost is known on arrival; output length is not)."""
    return request.prompt_tokens
''',
}

_REQUESTS = (SimpleNamespace(id=0, arrival=0.0, prompt_tokens=40, generated=0),
             SimpleNamespace(id=1, arrival=3.5, prompt_tokens=900, generated=0))
_REPLICAS = tuple(SimpleNamespace(index=i, url=f"http://replica-{i}", outstanding=o, assigned=a, running=r,
                                  waiting=o - r, kv_used_fraction=kv, ready=True)
                  for i, (o, a, r, kv) in enumerate(((4, 10, 2, 0.5), (1, 7, 1, 0.1), (7, 12, 4, 0.9))))
# a tuple: a candidate that empties what it is given cannot empty it for the next one validated


def _check_dispatch(fn) -> None:
    for request in _REQUESTS:
        choice = fn(request, _REPLICAS, 10.0)
        if not 0 <= choice < len(_REPLICAS):
            raise ValueError(f"dispatch returned {choice}, not an index into replicas")


DISPATCH = PolicySlot(
    name="dispatch",
    params=("request", "replicas", "now"),
    doc=(
        "Pick the vLLM server for a request: return an index into replicas (the servers that are up). "
        "request: id, arrival (s since the router started), prompt_tokens (exact for token-id prompts, "
        "else an estimate of 4 bytes per token), generated (0). Each replica: index, url, outstanding "
        "(sent by the router, not finished), assigned (sent so far), and from the server's last /metrics "
        "scrape: running, waiting, kv_used_fraction."
    ),
    baselines=DISPATCH_BASELINES,
    returns=int,
    validator=_check_dispatch,
    primitives=Primitives(
        features={"outstanding": "replicas[i].outstanding", "waiting": "replicas[i].waiting",
                  "running": "replicas[i].running", "kv": "replicas[i].kv_used_fraction",
                  "assigned": "replicas[i].assigned", "prompt": "request.prompt_tokens"},
        template="min(range(len(replicas)), key=lambda i: {expr})",
        conditionals=False, max_height=5, max_size=20,
    ),
)

PRIORITY = PolicySlot(
    name="priority",
    params=("request", "now"),
    doc=(
        "Order of a vLLM server's waiting queue: lower runs first. Called once, when the request "
        "arrives (now = that time, s since the router started). request: id, arrival, prompt_tokens, "
        "generated. The router sends it as vLLM's per-request priority (servers on "
        "--scheduling-policy priority), or the in-engine plugin calls it."
    ),
    baselines=PRIORITY_BASELINES,
    returns=(int, float),
    examples=tuple((r, 10.0) for r in _REQUESTS),
    primitives=Primitives(
        features={"arrival": "request.arrival", "prompt": "request.prompt_tokens", "now": "now"},
        constants=(0.0, 100.0), max_height=5, max_size=20,
    ),
)

SLOTS = [DISPATCH, PRIORITY]
