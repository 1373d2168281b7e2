"""The simulator's four policy slots: docstrings for prompts, baselines, GP primitive sets."""

from __future__ import annotations

from pathlib import Path

from autopoiesis.program import PolicySlot, Primitives

from .engine import RequestInfo

BASELINES = Path(__file__).resolve().parent / "baselines"


def _baselines(slot: str) -> dict[str, str]:
    files = sorted(BASELINES.glob(f"{slot}_*.py"))
    return {p.stem[len(slot) + 1:]: p.read_text() for p in files}


class _ExampleReplica:
    """A stand-in replica view for validating dispatch programs (same attributes as ReplicaView)."""

    def __init__(self, index, outstanding, speed):
        self.index, self.gpu, self.tp, self.pp = index, "A100-80GB", 1, 1
        self.waiting, self.running, self.outstanding = outstanding // 2, outstanding - outstanding // 2, outstanding
        self.assigned, self.kv_used_fraction, self.capacity_tokens = index * 3, 0.5, 100_000
        self.speed, self.ready = speed, True


_REQUESTS = (RequestInfo(0, 0.0, 512, 0), RequestInfo(1, 3.5, 3000, 40))
_REPLICAS = (_ExampleReplica(0, 4, 900.0), _ExampleReplica(1, 1, 400.0), _ExampleReplica(2, 7, 2000.0))
# a tuple, as the live replicas are: a candidate that empties what it is given cannot empty it for the next


def _check_dispatch(fn) -> None:
    for request in _REQUESTS:
        choice = fn(request, _REPLICAS, 10.0)
        if not 0 <= choice < len(_REPLICAS):
            raise ValueError(f"dispatch returned {choice}, not an index into replicas")


SCHEDULE = PolicySlot(
    name="schedule",
    params=("cluster", "workload", "cost_model"),
    doc=(
        "Make the serving plan. cluster.gpus: online GPUs (id, type, memory_gb, tflops, hbm_gbps, "
        "price_per_hour); cluster.types(): type -> list of ids. workload: expected rate (req/s), "
        "mean_prompt, mean_output, p90_prompt tokens. cost_model.fits(type, tp, pp) is free; "
        "cost_model.estimate(plan, workload) returns feasible, throughput_rps, ttft_s, load, gpus, "
        "cost_per_hour and costs simulated time, so searching longer delays serving. Return a list "
        "of replicas (gpu_ids, tp, pp): len(gpu_ids) == tp * pp, one GPU type per replica, each GPU once."
    ),
    baselines=_baselines("schedule"),
    returns=(list, tuple),
)

RESCHEDULE = PolicySlot(
    name="reschedule",
    params=("window", "cluster", "plan", "cost_model"),
    doc=(
        "Called every reschedule interval and on cluster events (cluster.events: (time, kind, gpus) "
        "with kind join, leave or notice: a spot GPU will leave soon). window: rate, mean_prompt, "
        "mean_output, p99_ttft, mean_ttft, slo_attainment, imbalance (max/mean outstanding), "
        "outstanding, utilization, workload (as schedule gets it). plan: the current replicas. "
        "Return None or False to keep the plan, True to re-run schedule on the observed workload, "
        "or a new plan. A changed replica reloads its weights (it serves nothing meanwhile) and "
        "its requests are recomputed elsewhere."
    ),
    baselines=_baselines("reschedule"),
    returns=(bool, type(None), list, tuple),
    primitives=Primitives(
        features={"rate": "window.rate", "imbalance": "window.imbalance", "slo": "window.slo_attainment",
                  "p99_ttft": "window.p99_ttft", "utilization": "window.utilization",
                  "outstanding": "window.outstanding", "events": "len(cluster.events)"},
        returns=bool, constants=(0.0, 4.0), max_height=4, max_size=15,
    ),
)

DISPATCH = PolicySlot(
    name="dispatch",
    params=("request", "replicas", "now"),
    doc=(
        "Pick the replica for a request: return an index into replicas. request: id, arrival, "
        "prompt_tokens, generated (tokens already produced, for a request migrated after a "
        "reconfiguration). Each replica: gpu, tp, pp, waiting, running, outstanding, assigned "
        "(requests sent so far), kv_used_fraction, capacity_tokens, speed (decode tokens/s at a "
        "nominal batch), ready (False while loading weights)."
    ),
    baselines=_baselines("dispatch"),
    returns=int,
    validator=_check_dispatch,
    primitives=Primitives(
        features={"outstanding": "replicas[i].outstanding", "waiting": "replicas[i].waiting",
                  "running": "replicas[i].running", "speed": "replicas[i].speed",
                  "kv": "replicas[i].kv_used_fraction", "assigned": "replicas[i].assigned",
                  "prompt": "request.prompt_tokens"},
        template="min(range(len(replicas)), key=lambda i: {expr})",
        conditionals=False, max_height=5, max_size=20,
    ),
)

PRIORITY = PolicySlot(
    name="priority",
    params=("request", "now"),
    doc=(
        "Order of a replica's waiting queue: lower runs first. Called once, when the request joins "
        "the queue (now = that time). request: id, arrival, prompt_tokens, generated. Aging that is "
        "linear in time can be written through request.arrival."
    ),
    baselines=_baselines("priority"),
    returns=float,
    examples=tuple((r, 10.0) for r in _REQUESTS),
    primitives=Primitives(
        features={"arrival": "request.arrival", "prompt": "request.prompt_tokens",
                  "generated": "request.generated", "now": "now"},
        constants=(0.0, 100.0), max_height=5, max_size=20,
    ),
)

SLOTS = [SCHEDULE, RESCHEDULE, DISPATCH, PRIORITY]
