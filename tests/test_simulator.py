"""The simulator's invariants, its agreement with the cost model, and queueing sanity."""

import math
import os
import re

import pytest

from autopoiesis.adapters.base import AdapterError
from autopoiesis.adapters.simulator import SimulatorAdapter, hardware, scenario as scenarios, simulate
from autopoiesis.adapters.simulator.costmodel import calibration
from autopoiesis.adapters.simulator.engine import Simulation
from autopoiesis.adapters.simulator.scenario import Scenario
from autopoiesis.metrics import SLO
from autopoiesis.sandbox import compile_policy

ADAPTER = SimulatorAdapter("stationary")
SLOTS = ADAPTER.slots()
BASELINES = ADAPTER.baselines()


def policy(name="default"):
    return compile_policy(BASELINES[name].source, SLOTS)


class Invariants:
    """Observer called after every engine segment."""

    def __init__(self):
        self.last = 0.0
        self.segments = 0

    def __call__(self, sim, replica, now):
        assert now >= self.last, "time ran backwards"
        self.last = now
        assert replica.kv_used <= replica.capacity, "KV cache over capacity"
        assert replica.seg_start >= replica.ready_at - 1e-9, "a replica served while loading its weights"
        assert not replica.removed, "a removed replica served"
        assert replica.running >= 0 and replica.reserved >= 0
        self.segments += 1


@pytest.mark.parametrize("name", scenarios.names())
@pytest.mark.parametrize("program", ["default", "reschedule:periodic", "dispatch:round_robin",
                                     "priority:shortest_prompt"])
def test_invariants(name, program):
    observer = Invariants()
    metrics, result = simulate(policy(program), name, seed=1, observer=observer)
    sc = scenarios.load(name, 1)
    ids = [r.request_id for r in result.records]
    assert sorted(ids) == list(range(len(sc.requests))), "every request completes exactly once"
    assert sum(r.output_tokens for r in result.records) == sum(o for _, _, o in sc.requests)
    for record in result.records:
        a, p, o = sc.requests[record.request_id]
        assert (record.arrival, record.prompt_tokens, record.output_tokens) == (a, p, o)
        assert record.arrival <= record.first_token <= record.finish
    assert observer.segments > 0
    assert metrics["requests"] == len(sc.requests)


@pytest.mark.parametrize("name", ["mixed", "spot_loss", "length_shift"])
def test_tokens_are_conserved_step_by_step(name):
    """Counted as the engine steps (decode runs, prefills, partial runs before a removal)."""
    sc = scenarios.load(name, 2)
    for program in ("reschedule:periodic", "reschedule:on_change", "schedule:uniform"):
        sim = Simulation(sc, policy(program), hardware.load_gpus(), hardware.model(sc.model),
                         lambda g: calibration(sc.calibration, g))
        sim.run()
        assert sim.tokens_out == sum(o for _, _, o in sc.requests)


def one_gpu_scenario(requests, duration=None):
    return Scenario(
        name="unit", description="", model="Llama-2-7B", requests=requests, initial_gpus=[(0, "A100-80GB")],
        cluster_events=[], workload_estimate=(1.0, 500.0, 200.0, 1000.0), slo=SLO(), token_budget=512,
        reschedule_interval=0, estimate_cost_s=0.5,
    )


def run(sc, program="schedule:uniform"):
    sim = Simulation(sc, policy(program), hardware.load_gpus(), hardware.model(sc.model),
                     lambda g: calibration("default", g))
    return sim, sim.run()


@pytest.mark.parametrize("prompt, output", [(1, 1), (100, 50), (1500, 300), (3000, 7)])
def test_single_request_latency_is_the_cost_models_formula(prompt, output):
    sim, result = run(one_gpu_scenario([(100.0, prompt, output)]))
    (record,) = result.records
    cost = sim.replica_cost("A100-80GB", 1, 1)
    assert record.e2e == pytest.approx(cost.request_latency(prompt, output, 512), rel=1e-9)
    assert record.ttft == pytest.approx(cost.request_latency(prompt, 1, 512), rel=1e-9)


def test_same_seed_same_metrics_to_the_last_bit():
    a, _ = simulate(policy("reschedule:periodic"), "mixed", seed=3)
    b, _ = simulate(policy("reschedule:periodic"), "mixed", seed=3)
    c, _ = simulate(policy("reschedule:periodic"), "mixed", seed=4)
    assert a == b
    assert a != c


class PreemptionWatch(Simulation):
    """Checks every preemption as it happens against what the engine promises (vLLM's rule):
    of the requests running on the replica, the one with the lowest priority goes, the
    latest queued of a tie (the largest (epoch, key, seq))."""

    preempted = 0

    def _preempt(self, replica):
        running = {id(r): r for _, _, r in replica.finishing if r.alive}
        lowest = max(running.values(), key=lambda r: (r.epoch, r.key, r.seq))
        super()._preempt(replica)
        assert [r for r in running.values() if not r.alive] == [lowest]
        assert lowest.target == lowest.prompt + lowest.generated and lowest.prefilled == 0  # recomputed
        self.preempted += 1


def test_a_full_cache_preempts_the_lowest_priority_running_request():
    """300 requests at once whose decode growth outgrows one A100's KV cache (about 110,000
    tokens of Llama-2-7B): shortest-prompt-first keeps the short prompts running and
    preempts the long ones, and every preempted request is recomputed and finishes."""
    import random

    rng = random.Random(5)
    requests = [(50.0 + i * 1e-3, rng.choice([100, 400, 400, 1200]), rng.randint(600, 1400)) for i in range(300)]
    sc = one_gpu_scenario(requests)
    sim = PreemptionWatch(sc, policy("priority:shortest_prompt"), hardware.load_gpus(), hardware.model(sc.model),
                          lambda g: calibration("default", g))
    result = sim.run()
    assert sim.preempted > 20
    assert sim.tokens_out == sum(o for _, _, o in requests)
    assert sorted(r.request_id for r in result.records) == list(range(len(requests)))
    preempted = [r for r in result.records if r.preemptions]
    assert max(r.prompt_tokens for r in result.records if not r.preemptions) >= 400
    assert all(r.prompt_tokens >= 400 for r in preempted)  # the shortest prompts always outrank someone


def poisson(rate, duration, seed=0, prompt=300, output=100):
    import random
    rng, t, out = random.Random(seed), 50.0, []
    while t < 50.0 + duration:
        t += rng.expovariate(rate)
        out.append((t, prompt, output))
    return out


def test_low_load_latency_approaches_unloaded_latency():
    sim, result = run(one_gpu_scenario(poisson(0.05, 4000)))
    unloaded = sim.replica_cost("A100-80GB", 1, 1).request_latency(300, 100, 512)
    mean = sum(r.e2e for r in result.records) / len(result.records)
    assert unloaded <= mean < 1.05 * unloaded


def test_waiting_grows_without_bound_past_capacity():
    """Arrivals at twice the service rate: the mean wait keeps growing with the run's length."""
    _, probe = run(one_gpu_scenario([(50.0, 300, 100)] * 4000))  # saturated: drain a large batch
    capacity = len(probe.records) / (probe.end - 50.0)
    means = []
    for duration in (200, 400, 800):
        _, result = run(one_gpu_scenario(poisson(2 * capacity, duration, seed=1)))
        means.append(sum(r.ttft for r in result.records) / len(result.records))
    assert means[0] * 1.6 < means[1] and means[1] * 1.6 < means[2]


@pytest.mark.parametrize("name", ["burst", "trace_code"])
def test_a_load_factor_scales_every_arrival_rate_and_nothing_else(name):
    shipped, heavier = scenarios.load(name, 3), scenarios.load(f"{name}@1.5", 3)

    def rate(sc):  # a trace replays faster, and ends sooner if it runs out (trace_code does)
        return len(sc.requests) / max(r[0] for r in sc.requests)

    assert 1.4 < rate(heavier) / rate(shipped) < 1.6
    assert heavier.workload_estimate[0] == pytest.approx(1.5 * shipped.workload_estimate[0])  # the operator knows
    assert heavier.cluster_events == shipped.cluster_events and heavier.initial_gpus == shipped.initial_gpus
    assert heavier.name == f"{name}@1.5" and "x1.5" in scenarios.describe(f"{name}@1.5")
    # the snapshot key changes with the factor; factor 1 is the shipped scenario itself
    assert scenarios.digest(f"{name}@1.5") != scenarios.digest(name) == scenarios.digest(f"{name}@1")
    assert scenarios.load(f"{name}@1", 3).requests == shipped.requests


@pytest.mark.parametrize("name, says", [("mixed@x", "must be a number"), ("mixed@0", "positive"),
                                        ("mixed@-2", "positive"), ("mixed@nan", "positive"),
                                        ("atlantis@2", "unknown scenario 'atlantis'")])
def test_a_bad_load_factor_says_what_is_wrong(name, says):
    with pytest.raises(scenarios.ScenarioError, match=says):
        scenarios.load(name)


STATIONARY = (scenarios.SCENARIOS / "stationary.toml").read_text()


def every_group(text: str, line: str) -> str:
    """``line`` added to each of stationary's three GPU groups."""
    return re.sub(r"(count = \d+\n)", lambda m: f"{m.group(1)}{line}\n", text)


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace("rate = 19.0", "rate = -19.0"), "workload.rate must be a number > 0, got -19.0"),
    (lambda t: t.replace("rate = 19.0", "rat = 19.0"),
     "unknown field 'workload.rat' (did you mean 'rate'?); missing field 'workload.rate'"),
    (lambda t: t.replace("duration_s = 600", 'duration_s = "ten minutes"'), "duration_s must be a number > 0"),
    (lambda t: t.replace("count = 4", "count = 0"), "count of [[cluster.gpus]] number 3 must be a whole number >= 1"),
    (lambda t: t.replace("count = 4", "count = 2.5"), "count of [[cluster.gpus]] number 3 must be a whole number"),
    (lambda t: t.replace("count = 4", "count = 4\nleave = 300"), "'leave of [[cluster.gpus]] number 3' (did you mean 'leave_at'?)"),
    (lambda t: t.replace("long_share = 0.1", "long_share = 1.5"), "workload.long_share must be a number >= 0 and <= 1"),
    (lambda t: t.replace('"constant"', '"sine"'), "workload.pattern must be one of constant, diurnal, burst"),
    (lambda t: t + "amplitude = 0.5\n", 'workload.amplitude applies to pattern = "diurnal" only'),
    (lambda t: t + "shifts = [[300]]\n", "workload.shifts must be a list of [at, share], got the row [300]"),
    (lambda t: t + "shifts = [[300, 2.0]]\n", "workload.shifts has [300, 2.0], whose share must be a number >= 0 and <= 1"),
    (lambda t: t + 'trace = "splitwise_code.csv"\n', "workload.pattern does not apply to a trace"),
    (lambda t: t.replace("slo = { ttft_s = 2.0, tpot_s = 0.1 }", "slo = { ttft_s = 0 }"), "slo.ttft_s must be a number > 0"),
    (lambda t: t.replace("max_context = 4096", "max_context = true"), "max_context must be a whole number >= 2, got True"),
    (lambda t: every_group(t, "leave_at = 300"), "every GPU has left by 300 s"),
    (lambda t: every_group(t, "join_at = 10"), "no GPU is there at 0 s"),
    (lambda t: t.replace("count = 4", "count = 4\njoin_at = 300\nleave_at = 200"),
     "[[cluster.gpus]] number 3: leave_at (200) must come after join_at (300)"),
    (lambda t: t.replace("count = 4", "count = 4\nleave_at = 200\nnotice_s = 300"), "notice_s (300) would come before"),
    (lambda t: t.replace("count = 4", "count = 4\nnotice_s = 30"), "notice_s applies to a group with leave_at only"),
    (lambda t: t.replace("[[cluster.gpus]]", "[[cluster.gpu]]"), "cluster must hold only its GPU groups"),
    (lambda t: t.replace("duration_s", "duraton_s"), "unknown field 'duraton_s' (did you mean 'duration_s'?)"),
    (lambda t: t.split("[workload]")[0].replace("max_context", "workload = 5\nmax_context"), "workload must be a table"),
    (lambda t: t.replace('model = "Llama-2-7B"', 'model = "Llama-2-7B"\ncalibration = "mine"'), "unknown calibration 'mine'"),
    (lambda t: t.replace('model = "Llama-2-7B"', 'model = "Llama-2-7B"\ncalibration = "cal.toml"'), "table file not found: cal.toml"),
])
def test_a_mistake_in_a_scenario_file_is_named_before_anything_runs(tmp_path, edit, says):
    """A scenario file is written by hand: a field that is unknown, missing or out of range is
    named in the error. Before, these ran (an unknown field ignored, a count of 0 or a trace with
    a pattern), or failed as "unexpected error: ValueError: lam < 0" from numpy, or failed every
    policy ("schedule returned an empty plan")."""
    path = tmp_path / "mine.toml"
    path.write_text(edit(STATIONARY))
    with pytest.raises(scenarios.ScenarioError) as raised:
        scenarios.load(str(path))
    assert says in str(raised.value)
    with pytest.raises(AdapterError, match=re.escape(says)):  # the CLI's commands build the adapter first
        SimulatorAdapter(str(path))


TRACE_HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


@pytest.mark.parametrize("rows, says", [
    ("0,10,3\n1,nan,3\n", "line 3: 1,nan,3 is not a request"),  # before: a simulation that never ended
    ("0,10,3\n1,-5,3\n", "line 3: 1,-5,3 is not a request (arrived_at, num_prefill_tokens, num_decode_tokens): "
                         "a time must be finite and token counts >= 0"),
    ("0,10,3\n\n1,5\n", "line 4: 1,5, is not a request (arrived_at, num_prefill_tokens, num_decode_tokens): it has 2 cells"),
    ("0,ten,3\n", "line 2: 0,ten,3 is not a request"),
    ("", "the trace has no requests"),
])
def test_a_trace_row_that_is_not_a_request_is_named_by_its_line(tmp_path, rows, says):
    (tmp_path / "mine.csv").write_text(TRACE_HEADER + rows)
    path = tmp_path / "mine.toml"
    path.write_text(STATIONARY.replace('pattern = "constant"\nlong_share = 0.1', 'trace = "mine.csv"'))
    with pytest.raises(AdapterError, match=re.escape(f"mine.csv, {says}" if "line" in says else says)):
        SimulatorAdapter(str(path))


def test_an_azure_trace_replays_its_gaps(tmp_path):
    from autopoiesis.traces import read_trace

    (tmp_path / "azure.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                                        "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:47.0000000,10,1\n")
    t, p, o = read_trace(tmp_path / "azure.csv")
    assert t.tolist() == pytest.approx([0.0, 0.31941, 4.314579], abs=1e-6)  # sorted by time, from the first
    assert p.tolist() == [374, 10, 396] and o.tolist() == [44, 1, 109]


def test_a_trace_is_parsed_once_per_process_while_its_file_is_unchanged(tmp_path, monkeypatch):
    """Every evaluation of a trace scenario builds its workload from the file; the parsed
    arrays are shared and read-only, and an edited file is read again."""
    from autopoiesis.traces import read_trace

    path = tmp_path / "mine.csv"
    path.write_text(TRACE_HEADER + "0,10,3\n1,20,4\n")
    first = read_trace(path)
    assert all(a is b for a, b in zip(read_trace(path), first))  # not parsed again
    with pytest.raises(ValueError, match="read-only"):
        first[1][0] = 99  # no caller can change what the others get
    path.write_text(TRACE_HEADER + "0,10,3\n1,20,4\n2,30,5\n")
    assert read_trace(path)[1].tolist() == [10, 20, 30] and first[1].tolist() == [10, 20]
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.csv").write_text(TRACE_HEADER + "0,10,3\n1,20,4\n2,40,5\n")  # same size
    os.utime(other / "mine.csv", ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    monkeypatch.chdir(tmp_path)
    assert read_trace("mine.csv")[1].tolist() == [10, 20, 30]
    monkeypatch.chdir(other)  # the same name, size and time: another file
    assert read_trace("mine.csv")[1].tolist() == [10, 20, 40]


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace('type = "A10G"', 'type = "A10"'), "unknown GPU type(s) A10 (add them with gpu_tables)"),
    (lambda t: t.replace('"Llama-2-7B"', '"Llama-2-70B"').replace('"A100-80GB"', '"A10G"').replace('"L40S"', '"A10G"')
     .replace("count = 4", "count = 2"), "Llama-2-70B fits on none of the GPUs there at 0 s (6 x A10G)"),
    (lambda t: t.replace('model = "Llama-2-7B"', 'model = "Llama-2-7B"\ngpu_tables = ["gpus.toml"]'),
     "gpus.toml: [MyGPU]: missing network_gbps; hbm_gbps must be a positive number, got 'fast'"),
    (lambda t: t.replace('model = "Llama-2-7B"', 'model = "Llama-2-7B"\nmodel_tables = ["models.toml"]'),
     "models.toml: [Tiny]: layers must be a positive whole number, got 2.5"),
])
def test_a_scenario_whose_hardware_cannot_serve_is_refused_by_the_adapter(tmp_path, edit, says):
    (tmp_path / "gpus.toml").write_text('[MyGPU]\nbf16_tflops = 500\nmemory_gb = 96\nhbm_gbps = "fast"\n'
                                        'link_gbps = 400\nprice_per_hour = 3.0\n')
    (tmp_path / "models.toml").write_text("[Tiny]\nparams = 1e9\nlayers = 2.5\nhidden = 64\nheads = 4\nkv_heads = 4\n"
                                          "intermediate = 128\nvocab = 100\n")
    path = tmp_path / "mine.toml"
    path.write_text(edit(STATIONARY))
    with pytest.raises(AdapterError, match=re.escape(says)):
        SimulatorAdapter(str(path))


def test_a_calibration_file_that_is_not_toml_is_named(tmp_path):
    (tmp_path / "cal.toml").write_text("[default\n")
    path = tmp_path / "mine.toml"
    path.write_text(STATIONARY.replace('model = "Llama-2-7B"', 'model = "Llama-2-7B"\ncalibration = "cal.toml"'))
    with pytest.raises(AdapterError, match=re.escape(f"{tmp_path / 'cal.toml'}: Expected ']'")):
        SimulatorAdapter(str(path))


def test_every_shipped_scenario_passes_its_checks():
    for name in scenarios.names():
        SimulatorAdapter(name)  # raises on a malformed field, unknown hardware or a model that fits nowhere


def test_adapter_evaluates_through_the_sandbox():
    from autopoiesis import Evaluator, Task

    adapter = SimulatorAdapter("burst", requests=800)
    snapshot = adapter.snapshot(0)
    with Evaluator(adapter, workers=1) as evaluator:
        tasks = [Task(p.id, p.source, snapshot) for p in list(BASELINES.values())[:3]]
        outcomes = evaluator.evaluate(tasks)
    for outcome in outcomes.values():
        assert outcome.ok, outcome.error
        assert outcome.metrics["requests"] == 800
        assert set(outcome.metrics) == set(adapter.metrics)  # what --objective is checked against
        assert math.isfinite(outcome.metrics["total_time"])


def test_invalid_plan_is_a_policy_error_with_a_reason():
    source = BASELINES["default"].source.replace(
        "def schedule(cluster, workload, cost_model):", "def schedule(cluster, workload, cost_model):\n    return [((0, 0), 2, 1)]\n\ndef unused(cluster, workload, cost_model):", 1)
    from autopoiesis.program import PolicyError
    with pytest.raises(PolicyError, match="twice"):
        simulate(compile_policy(source, SLOTS), "stationary", 0, requests_limit=10)


def test_cost_model_view_refuses_nonsense_instead_of_crashing():
    source = BASELINES["schedule:uniform"].source.replace(
        "while tp <= 8 and not cost_model.fits(gpu_type, tp, 1):",
        "if cost_model.fits(gpu_type, 0, 1) or cost_model.fits(gpu_type, 10**9, 1):\n            return []\n"
        "        while tp <= 8 and not cost_model.fits(gpu_type, tp, 1):", 1)
    metrics, _ = simulate(compile_policy(source, SLOTS), "stationary", 0, requests_limit=50)
    assert metrics["requests"] == 50


def test_users_add_gpus_and_models_in_toml(tmp_path):
    (tmp_path / "gpus.toml").write_text(
        '[MyGPU]\nbf16_tflops = 500\nmemory_gb = 96\nhbm_gbps = 4000\nlink_gbps = 400\n'
        'network_gbps = 50\nprice_per_hour = 3.0\nsource = "made up for a test"\n')
    (tmp_path / "models.toml").write_text(
        '["Tiny-1B"]\nparams = 1.1e9\nlayers = 22\nhidden = 2048\nheads = 32\nkv_heads = 4\n'
        'intermediate = 5632\nvocab = 32000\nsource = "made up for a test"\n')
    stationary = (scenarios.SCENARIOS / "stationary.toml").read_text()
    custom = stationary.replace('model = "Llama-2-7B"', 'model = "Tiny-1B"\ngpu_tables = ["gpus.toml"]\nmodel_tables = ["models.toml"]')
    custom = custom.replace('type = "A10G"', 'type = "MyGPU"')
    (tmp_path / "custom.toml").write_text(custom)
    metrics, result = simulate(policy("schedule:uniform"), str(tmp_path / "custom.toml"), 0, requests_limit=300)
    assert metrics["requests"] == 300
    used = {gpu for ids, _, _ in result.plans[0][1] for gpu in ids}
    assert {4, 5, 6, 7} <= used  # the four MyGPU cards (ids 4-7) serve in the plan
    assert {r.replica for r in result.records} >= {i for i, (ids, _, _) in enumerate(result.plans[0][1]) if ids[0] >= 4}

    broken = custom.replace('gpu_tables = ["gpus.toml"]', 'gpu_tables = []')
    (tmp_path / "broken.toml").write_text(broken)
    with pytest.raises(scenarios.ScenarioError, match="unknown GPU type"):
        simulate(policy("schedule:uniform"), str(tmp_path / "broken.toml"), 0, requests_limit=10)


def test_events_grow_with_requests_not_tokens():
    """Four times the output tokens per request: about the same number of engine events."""
    def events(requests):
        sim, result = run(one_gpu_scenario(requests))
        assert len(result.records) == len(requests)
        return sim.seq

    short = events(poisson(4.0, 300, seed=5, prompt=300, output=100))
    long = events(poisson(4.0, 300, seed=5, prompt=300, output=400))
    double = events(poisson(8.0, 300, seed=5, prompt=300, output=100))
    assert long < 1.3 * short
    assert double > 1.6 * short


def test_losing_every_gpu_without_replanning_ends_with_a_reason():
    """A scenario file cannot say this (its checks refuse it); a twin's replay built in code can."""
    from dataclasses import replace

    from autopoiesis.adapters.simulator import build
    from autopoiesis.program import PolicyError

    sc = scenarios.load("stationary", 0)
    doomed = replace(sc, cluster_events=[(100.0, "leave", tuple(i for i, _ in sc.initial_gpus))])
    with pytest.raises(PolicyError, match="no replica is left"):
        build(doomed, policy("default"), "stationary").run()


HOSTILE_VIEW_PROGRAMS = {
    "reach into a replica": ("dispatch", "def dispatch(request, replicas, now):\n    return replicas[0]._r.index\n", "rejected"),
    "rewrite a replica's load": ("dispatch", "def dispatch(request, replicas, now):\n"
                                 "    replicas[0].outstanding = 0\n    return 0\n", "attribute 'outstanding' is not allowed"),
    "empty the replicas": ("dispatch", "def dispatch(request, replicas, now):\n"
                           "    replicas.clear()\n    return 0\n", "AttributeError"),  # a tuple: the live one stays
    "patch the cost model": ("schedule", "def schedule(cluster, workload, cost_model):\n"
                             "    cost_model.estimate = None\n    return []\n", "attribute 'estimate' is not allowed"),
    "free estimates via the class": ("schedule", "def schedule(cluster, workload, cost_model):\n"
                                     "    return cost_model.__class__\n", "rejected"),
    "index out of range": ("dispatch", "def dispatch(request, replicas, now):\n    return len(replicas) + 5\n", "dispatch returned"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_VIEW_PROGRAMS))
def test_policies_cannot_tamper_with_the_simulation(name):
    """Through the sandboxed evaluator, as evolution would run them."""
    from autopoiesis import Evaluator, Task

    slot, source, reason = HOSTILE_VIEW_PROGRAMS[name]
    program = BASELINES["default"].source
    start = program.index(f"def {slot}(")
    end = program.find("\n\n\n", start)
    program = program[:start] + source + (program[end:] if end != -1 else "")
    adapter = SimulatorAdapter("stationary", requests=200)
    with Evaluator(adapter, workers=1) as evaluator:
        (outcome,) = evaluator.evaluate([Task("hostile", program, adapter.snapshot(0))]).values()
        assert evaluator.healthy()
    assert not outcome.ok and reason in outcome.error


def _sim(name, program, seed=0):
    sc = scenarios.load(name, seed)
    return Simulation(sc, policy(program), hardware.load_gpus(), hardware.model(sc.model),
                      lambda g: calibration(sc.calibration, g))


def test_after_a_swap_the_backlog_runs_first_and_in_its_order():
    """Keys from two programs are on unrelated scales: after a swap from FCFS (keys are arrival
    times, > 0) to last-come-first (keys < 0), the arrivals must not all rank ahead of the backlog,
    and the backlog is not re-sorted either: it keeps the order it was promised."""
    sim = _sim("burst", "default")
    sim.start()
    swap = 150.0
    sim.advance(swap)
    lifo = BASELINES["default"].source + "\n\ndef priority(request, now):\n    return -request.arrival\n"
    sim.deploy(compile_policy(lifo, SLOTS))
    after = sim.advance(math.inf)
    backlog = [r for r in after if r.arrival <= swap and r.first_token > swap]
    later = [r for r in after if r.arrival > swap]
    assert len(backlog) > 100 and later  # the burst left a queue at the swap
    for replica in {r.replica for r in backlog}:
        mine = sorted((r for r in backlog if r.replica == replica), key=lambda r: r.arrival)
        assert all(a.first_token <= b.first_token for a, b in zip(mine, mine[1:]))  # first come, first served
        assert all(r.first_token >= mine[-1].first_token for r in later if r.replica == replica)
    after_swap = sorted((r for r in later if r.first_token > max(b.first_token for b in backlog)), key=lambda r: r.arrival)
    assert after_swap[0].first_token > after_swap[-1].first_token  # the new order does hold for the arrivals


def test_advancing_in_windows_equals_one_run():
    whole = _sim("mixed", "reschedule:periodic").run()
    sim = _sim("mixed", "reschedule:periodic")
    sim.start()
    t, windows = 0.0, []
    while not sim.finished:
        t += 37.0
        windows.append(sim.advance(t))
        assert all(r.finish <= t for r in windows[-1])
    chunked = sim.result()
    assert [r for w in windows for r in w] == whole.records
    assert (chunked.end, chunked.gpu_seconds, chunked.cost_usd) == (whole.end, whole.gpu_seconds, whole.cost_usd)


def test_deploy_swaps_the_policy_mid_run():
    base = _sim("stationary", "default").run()
    sim = _sim("stationary", "default")
    sim.start()
    before = sim.advance(300.0)
    sim.deploy(policy("dispatch:round_robin"))
    after = sim.advance(math.inf)
    assert before == [r for r in base.records if r.finish <= 300.0]  # the past is untouched
    assert after != base.records[len(before):]  # the new policy decides from now on
    assert len(before) + len(after) == len(base.records)


def test_a_candidate_that_empties_its_inputs_leaves_the_next_candidates_inputs_whole():
    """The slots' example inputs are shared by every validation in a worker: a candidate that
    empties ``replicas`` fails itself, and the next candidate in the same worker still passes."""
    from autopoiesis import Evaluator, Task

    program = BASELINES["default"].source
    start = program.index("def dispatch(")
    end = program.find("\n\n\n", start)
    emptying = program[:start] + ("def dispatch(request, replicas, now):\n    replicas.clear()\n    return 0\n"
                                  + (program[end:] if end != -1 else ""))
    adapter = SimulatorAdapter("stationary", requests=200)
    snapshot = adapter.snapshot(0)
    with Evaluator(adapter, workers=1) as evaluator:
        first = evaluator.evaluate([Task("emptying", emptying, snapshot)])
        second = evaluator.evaluate([Task("default", program, snapshot)])
    assert not next(iter(first.values())).ok
    assert next(iter(second.values())).ok, next(iter(second.values())).error
