"""The engine's policy slot: the order of its waiting queue."""

from __future__ import annotations

from types import SimpleNamespace

from autopoiesis.program import PolicySlot, Primitives

PRIORITY_BASELINES = {
    "fcfs": '''def priority(request, now):
    """First come, first served."""
    return request.arrival
''',
    "shortest_prompt": '''def priority(request, now):
    """Shortest prompt first: the cheapest prefill runs first."""
    return request.prompt_tokens
''',
    "smallest_request": '''def priority(request, now):
    """Smallest request first: fewest tokens to prefill and generate (shortest job first, with
    the length every request states as max_tokens), so the most requests finish soonest."""
    return request.prompt_tokens + request.max_tokens
''',
}

_REQUESTS = (SimpleNamespace(id=0, arrival=0.0, prompt_tokens=40, max_tokens=32),
             SimpleNamespace(id=1, arrival=3.5, prompt_tokens=700, max_tokens=128))

PRIORITY = PolicySlot(
    name="priority",
    params=("request", "now"),
    doc=(
        "Order of the engine's waiting queue: lower runs first. Called once, when the request arrives "
        "(now = that time, s since the engine started). request: id, arrival, prompt_tokens, max_tokens "
        "(the engine generates exactly max_tokens). The engine admits from the head of the queue while "
        "the batch has room and the KV cache can reserve the head's prompt_tokens + max_tokens; a head "
        "that does not fit waits, and nothing overtakes it."
    ),
    baselines=PRIORITY_BASELINES,
    returns=(int, float),
    examples=tuple((r, 10.0) for r in _REQUESTS),
    primitives=Primitives(
        features={"arrival": "request.arrival", "prompt": "request.prompt_tokens",
                  "max_tokens": "request.max_tokens", "now": "now"},
        constants=(0.0, 100.0), max_height=5, max_size=20,
    ),
)

SLOTS = [PRIORITY]
