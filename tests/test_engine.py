"""The torch engine adapter: its scheduler, its model's KV cache, the twin's costs, and the live engine.

The live tests run the real torch model in this process at real time (a few seconds of load each).
They run it on the CPU; ``AUTOPOIESIS_TEST_DEVICE=cuda`` runs the model's tests on a GPU instead.
"""

import json
import math
import os
import random
import statistics
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # the engine's extra; `pip install -e '.[dev]'` installs it

from autopoiesis.adapters.base import AdapterError, load_adapter  # noqa: E402
from autopoiesis.adapters.engine import EngineAdapter  # noqa: E402
from autopoiesis.adapters.engine.engine import (  # noqa: E402
    Config, Costs, Engine, Modelled, Request, fit, replay, scale, serve, shape)
from autopoiesis.adapters.engine.model import Shape, TinyLM  # noqa: E402
from autopoiesis.adapters.engine.slots import PRIORITY_BASELINES, SLOTS  # noqa: E402
from autopoiesis.archive import Archive  # noqa: E402
from autopoiesis.evolution import Config as EvolutionConfig  # noqa: E402
from autopoiesis.online import Controller, OnlineConfig  # noqa: E402
from autopoiesis.program import Program, replace_function  # noqa: E402
from autopoiesis.sandbox import compile_policy  # noqa: E402
from processes import ended  # noqa: E402

DEVICE = os.environ.get("AUTOPOIESIS_TEST_DEVICE", "cpu")  # where the torch model runs


def policy(name="fcfs"):
    return compile_policy(PRIORITY_BASELINES[name], SLOTS)


def workload(n=300, seed=0, span=20.0):
    rng = random.Random(seed)
    return sorted((rng.uniform(0, span), rng.choice([24, 600]), rng.choice([8, 96])) for _ in range(n))


class Watching(Modelled):
    """Modelled costs that also check every step against the engine's limits."""

    def __init__(self, costs, config, engine_ref):
        super().__init__(costs)
        self.config, self.engine_ref, self.batches = config, engine_ref, []

    def step(self, prefill, decode):
        engine = self.engine_ref[0]
        assert len(prefill) + len(decode) <= self.config.max_batch
        assert sum(r.length for r in prefill + decode) == engine.reserved <= self.config.kv_tokens
        self.batches.append(len(prefill) + len(decode))
        return super().step(prefill, decode)


def test_the_engine_keeps_its_limits_and_serves_every_request_its_max_tokens():
    config, ref = Config(max_batch=4, kv_tokens=1500), []
    executor = Watching(Costs(), config, ref)
    order = []
    engine = Engine(config, executor, lambda r, now: (order.append(r.id), r.prompt_tokens)[1])
    ref.append(engine)
    requests = [Request(i, a, p, m) for i, (a, p, m) in enumerate(workload(60, span=1.0))]
    serve(engine, requests)
    assert order == list(range(60))  # priority is asked once per request, on arrival
    assert all(r.generated == r.max_tokens and r.arrival <= r.first_token <= r.finish for r in requests)
    assert max(executor.batches) == 4 and engine.reserved == 0


def test_the_head_of_the_queue_waits_for_room_and_nothing_overtakes_it():
    config = Config(max_batch=8, kv_tokens=1000)
    big, small = Request(0, 0.0, 700, 10), Request(1, 0.0, 20, 10)
    running = Request(2, 0.0, 500, 50)
    engine = Engine(config, Modelled(Costs()), lambda r, now: -r.prompt_tokens)  # biggest first
    engine.add(running, 0.0)
    engine.step(0.0)
    engine.add(big, 0.1)
    engine.add(small, 0.1)
    engine.step(0.1)
    assert engine.running == [running] and small.generated == 0  # the small one fits, but waits behind the big
    while running.generated < running.max_tokens:
        engine.step(1.0)
    engine.step(2.0)
    assert big.generated == 1 and small.generated == 1


def test_after_a_new_priority_the_backlog_keeps_its_order_ahead_of_later_arrivals():
    """Old and new keys are on unrelated scales: the backlog neither mixes with nor is re-sorted."""
    engine = Engine(Config(max_batch=1, kv_tokens=1000), Modelled(Costs()), lambda r, now: r.arrival)  # fcfs
    for i, prompt in enumerate((10, 30, 20)):
        engine.add(Request(i, float(i), prompt, 1), 3.0)
    engine.priority = lambda r, now: -r.prompt_tokens  # the biggest first: keys near -20, all below the old ones
    engine.new_epoch()
    engine.add(Request(3, 3.5, 5, 1), 3.5)
    engine.add(Request(4, 3.6, 20, 1), 3.6)
    served = []
    while engine.busy:
        _, done = engine.step(4.0)
        served += [r.id for r in done]
    # old keys kept in one heap: 4, 3, 0, 1, 2; the backlog keyed again: 1, 2, 4, 0, 3
    assert served == [0, 1, 2, 4, 3]


def test_the_twin_is_deterministic_and_the_queue_order_matters_under_load():
    config, costs = Config(max_batch=8, kv_tokens=3000), Costs()
    requests = workload(400, span=8.0)
    fcfs = replay(policy("fcfs"), requests, config, costs)
    assert fcfs == replay(policy("fcfs"), requests, config, costs)
    smallest = replay(policy("smallest_request"), requests, config, costs)
    mean = lambda recs: sum(r.e2e for r in recs) / len(recs)
    assert mean(smallest) < 0.7 * mean(fcfs)
    assert len(smallest) == 400 and all(r.output_tokens == m for r, (_, _, m) in zip(smallest, requests))


def test_fit_recovers_step_costs_from_timings_and_scale_follows_the_live_level():
    truth = Costs(0.003, 9e-5, 2e-8, 0.0018, 2e-4, 3e-6, 1e-10)
    rng = random.Random(1)
    steps = []
    for _ in range(3):
        for n in (16, 64, 256, 640):
            steps.append(shape([Request(0, 0.0, n, 4)], []))
        for b in (1, 4, 16):
            for ctx in (32, 300, 1000):
                steps.append(shape([], [Request(i, 0.0, ctx, 4, generated=1) for i in range(b)]))
    timed = [(x, truth.step_of(x)) for x in steps]
    slowed = [(x, t * (2 + rng.random())) for x, t in timed[::2]]  # a repeat slowed by another process
    got = fit(timed + slowed)
    for name, value in truth.to_dict().items():
        assert getattr(got, name) == pytest.approx(value, rel=0.02), name
    live = [(x, 1.3 * truth.step_of(x)) for x in steps[:10]]
    assert scale(got, live) == pytest.approx(1.3, rel=0.02) and scale(got, []) == 1.0
    assert got.scaled(2.0).decode_per_seq_s == pytest.approx(2 * got.decode_per_seq_s)


def test_fit_holds_a_cost_the_data_would_make_negative_at_its_floor():
    steps = [((1.0, float(n), float(n * n), 0.0, 0.0, 0.0, 0.0), 0.01 - 1e-6 * n) for n in (10, 100, 1000)]
    steps += [((0.0, 0.0, 0.0, 1.0, float(b), b * 100.0, (b * 100.0) ** 2), 0.002 + 1e-4 * b) for b in (1, 4, 8)]
    costs = fit(steps)
    assert costs.prefill_per_token_s == costs.prefill_per_token_sq_s == 0.0 and costs.prefill_base_s > 0  # longer: faster
    assert costs.decode_per_seq_s > 0 and min(costs.to_dict().values()) >= 0


def test_the_kv_cache_decodes_what_a_full_forward_computes():
    model = TinyLM(Shape(vocab=97, hidden=64, layers=2, heads=2), max_len=64).to(DEVICE).eval()

    def on(*values):
        return torch.tensor(values, device=DEVICE)

    k = torch.zeros(2, 3, 2, 64, 32, device=DEVICE)
    v = torch.zeros_like(k)
    a, b = torch.randint(97, (1, 20)).to(DEVICE), torch.randint(97, (1, 9)).to(DEVICE)
    span = torch.arange(20, device=DEVICE).view(1, -1)
    with torch.inference_mode():
        expected = model(a, span, on(0), k.clone(), v.clone())
        model(a[:, :17], span[:, :17], on(1), k, v)  # prefill, slot 1
        model(b[:, :6], span[:, :6], on(2), k, v)  # a shorter one, slot 2
        for step in range(3):  # decode both in one batch: rows of different lengths
            tokens = torch.stack([a[0, 17 + step: 18 + step], b[0, 6 + step: 7 + step]])
            logits = model(tokens, on([17 + step], [6 + step]), on(1, 2), k, v)
        other = model(b, span[:, :9], on(0), torch.zeros_like(k), torch.zeros_like(v))
    assert logits.device.type == torch.device(DEVICE).type
    assert torch.allclose(logits[0], expected[0], atol=1e-4)
    assert torch.allclose(logits[1], other[0], atol=1e-4)


SMALL = dict(scenario="burst", rate=8.0, duration=6.0, hidden=64, layers=2, heads=2, vocab=256, max_batch=8,
             kv_tokens=2048, max_prompt=512, max_output=64, device=DEVICE)


@pytest.fixture(scope="module")
def small_engine():
    """A small, fast model; its costs are timed once for the module."""
    adapter = EngineAdapter(**SMALL)
    adapter.fitted_costs()
    return adapter


def test_a_policy_that_raises_or_overflows_on_the_live_engine_never_drops_a_request(small_engine, tmp_path):
    adapter = small_engine
    adapter.run_dir = str(tmp_path)
    bad = Program("def priority(request, now):\n    if request.id % 2:\n        raise ValueError('odd')\n"
                  "    if request.id % 4 == 0:\n        return 10 ** 400\n"  # an int no float can hold
                  "    return request.arrival\n", name="bad")
    adapter.start(seed=7)
    try:
        adapter.deploy(bad, [adapter.baselines()["fcfs"]])
        records, calls, fallbacks, arrived = [], 0, 0, []
        obs = adapter.observe(adapter.now() + 2.0)
        while True:
            records += obs.records
            arrived += obs.arrival_prompts
            assert len(obs.arrival_prompts) == obs.arrivals
            calls += obs.calls.get("priority", 0)
            fallbacks += obs.fallbacks.get("priority", 0)
            if obs.finished:
                break
            obs = adapter.observe(adapter.now() + 2.0)
    finally:
        adapter.stop()
    load = adapter.load(7)
    assert len(records) == len(load) == calls > 10
    assert fallbacks == sum(i % 2 or i % 4 == 0 for i in range(len(load)))
    assert sorted(r.request_id for r in records) == list(range(len(load)))
    assert arrived == [p for _, p, _ in load]  # the length mix of the arrivals, in order
    assert all(r.arrival <= r.first_token <= r.finish and r.output_tokens == load[r.request_id][2] for r in records)
    logged = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(logged) == len(records)


def test_a_deployment_starts_a_new_order_epoch_only_for_a_new_priority(small_engine, tmp_path):
    """Keys of one ``priority`` are on one scale: a program that keeps it (here, with its
    docstring gone) leaves the queue one heap; a new one queues the backlog ahead."""
    adapter = small_engine
    adapter.run_dir = str(tmp_path)
    programs = adapter.baselines()
    fcfs = programs["fcfs"]
    undocumented = Program(replace_function(fcfs.source, "priority", "def priority(request, now):\n    return request.arrival\n"))
    adapter.start(seed=3)
    try:
        epochs = []
        for program in (fcfs, undocumented, programs["shortest_prompt"], programs["shortest_prompt"], fcfs):
            adapter.deploy(program, [fcfs])
            epochs.append(adapter.live["engine"].epoch)
    finally:
        adapter.stop()
    assert undocumented.id != fcfs.id and [e - epochs[0] for e in epochs] == [0, 0, 1, 1, 2]


def test_a_live_window_replays_on_the_twin_close_to_what_was_served(small_engine, tmp_path):
    adapter = small_engine
    adapter.run_dir = str(tmp_path)
    adapter.start(seed=3)
    try:
        fcfs = adapter.baselines()["fcfs"]
        adapter.deploy(fcfs)
        while not adapter.observe(adapter.now() + 1.0).finished:
            pass
        until = adapter.now()
        snapshot = adapter.window_snapshot(0.0, until, fcfs)
        check, names = adapter.window_check(0.0, until, fcfs)  # taken before window_metrics rescales the costs
        metrics = adapter.window_metrics(0.0, until, fcfs)
        later = adapter.window_snapshot(0.0, until, fcfs)
        served = list(adapter.live["records"])
    finally:
        adapter.stop()
    assert len(snapshot.params["requests"]) == len(served)
    replayed = adapter.evaluate(policy("fcfs"), snapshot)
    assert replayed["requests"] == len(served) and "twin_error" not in replayed
    assert set(replayed) == set(adapter.metrics) - {"twin_error"}  # what --objective is checked against
    assert metrics["cost_scale"] > 0 and "twin_error" not in metrics  # the replay is the check's, off the thread
    start = adapter.fitted_costs()
    assert snapshot.params["costs"] == check.params["costs"] == start.to_dict()  # at first, the costs timed at start
    assert later.params["costs"] == start.scaled(metrics["cost_scale"]).to_dict()  # then at the live level
    checked = adapter.evaluate(policy("fcfs"), check)
    observed = statistics.fmean(r.e2e for r in served)
    assert set(checked) == set(adapter.metrics)
    assert names == ("twin_error",) and checked["twin_error"] == pytest.approx(
        abs(checked["mean_e2e"] - observed) / observed)  # every request was served inside the window
    assert checked["twin_error"] < 1.0  # the same scheduler on timed costs: within a factor of two


def test_the_live_engine_serves_on_while_an_evolution_is_in_flight(tmp_path):
    """The engine serves only inside ``observe``. The serving loop used to hold a live clock
    at the evolution's clock, as a simulated one must be; on the wall clock that target was
    always just past, so ``observe`` returned at once, and the loop slept 5 ms and asked
    again: no request finished while an evolution ran (0 of 501 in 11.6 s of evolutions
    here, mean e2e 3.68 s against 0.10 s). A ``wall_clock`` adapter now serves on and is
    looked at every ``poll_s`` for the result."""
    adapter = EngineAdapter(scenario="steady", rate=40.0, duration=12.0, hidden=64, layers=2, heads=2, vocab=256,
                            max_batch=8, kv_tokens=2048, max_prompt=512, max_output=64, device=DEVICE,
                            run_dir=str(tmp_path))
    assert adapter.wall_clock
    controller = Controller(adapter, OnlineConfig(window_s=2.0, period=1, history=1, margin=1e9, live_seed=5),
                            EvolutionConfig(population=8, generations=3, workers=1, held_out_snapshots=0, seed=1),
                            archive=Archive())
    summary = controller.run()
    jobs = [(d.time - d.evolution_s, d.time) for d in controller.deployments if d.kind == "rejected"]
    evolving = sum(end - start for start, end in jobs)
    assert summary["evolutions"] >= 2 and evolving > 1.0  # evolutions ran, for a while
    during = sum(any(start < r.finish < end for start, end in jobs) for r in controller.records)
    overall = len(controller.records) / summary["metrics"]["total_time"]
    assert during / evolving > overall / 3  # it served at about its usual pace meanwhile


def test_the_twin_check_of_each_live_window_runs_off_the_serving_thread(tmp_path, monkeypatch):
    """Replaying a window on the twin is a few hundred milliseconds of Python on a small model;
    on the serving thread the engine served nothing meanwhile (3% of the wall clock in
    benchmarks/serving_cost.py). The controller now has the evolution plane's worker score
    the adapter's ``window_check``, and the twin error joins the window when it is in."""
    import threading

    from autopoiesis.adapters import engine as engine_package

    parent, replay = os.getpid(), engine_package.replay

    def nowhere_on_the_serving_thread(*args, **kwargs):
        if os.getpid() == parent and threading.current_thread() is threading.main_thread():
            raise AssertionError("the twin replayed a window on the serving thread")
        return replay(*args, **kwargs)

    monkeypatch.setattr(engine_package, "replay", nowhere_on_the_serving_thread)  # workers fork with it
    adapter = EngineAdapter(scenario="steady", rate=30.0, duration=8.0, hidden=64, layers=2, heads=2, vocab=256,
                            max_batch=8, kv_tokens=2048, max_prompt=512, max_output=64, device=DEVICE,
                            run_dir=str(tmp_path))
    controller = Controller(adapter, OnlineConfig(window_s=2.0, period=0, margin=1e9, live_seed=2),
                            EvolutionConfig(population=4, generations=1, workers=1, held_out_snapshots=0, seed=1),
                            archive=Archive())
    controller.run()
    archived = controller.archive.windows(controller.run_id)
    errors = [w["metrics"].get("twin_error") for w in archived]
    assert len(archived) >= 4 and all(e is not None and math.isfinite(e) for e in errors[:-1]), errors
    assert [w.metrics.get("twin_error") for w in controller.windows] == errors  # the live view's windows too
    assert all("cost_scale" in w["metrics"] for w in archived)  # the cheap number stays on the thread


def test_a_resumed_offline_run_keeps_the_step_costs_it_began_with(small_engine, tmp_path):
    """Resuming in a new process would time the model again; it scores on the snapshots it began with."""
    from autopoiesis.evolution import Evolution

    config = EvolutionConfig(population=6, generations=2, workers=1, train_snapshots=2, held_out_snapshots=1, seed=1)
    archive = Archive(tmp_path / "archive.db")
    first = Evolution(small_engine, EvolutionConfig(**{**config.to_dict(), "generations": 0}), archive).run()
    archive.set_status(first.run_id, "interrupted")
    fresh = EngineAdapter(**SMALL)  # as a new process makes it
    Evolution(fresh, config, archive).run(resume=first.run_id)
    stored = archive.run(first.run_id)["config"]
    scored_on = {row[0] for row in archive.db.execute("SELECT DISTINCT snapshot FROM evaluations")}
    assert scored_on == set(stored["train_keys"] + stored["held_out_keys"])
    assert fresh.costs is None  # nothing was timed: the kept snapshots carry the first session's costs


def test_a_load_factor_sizes_the_load_to_the_twins_capacity(small_engine):
    """``load_factor`` F: the mean rate is F times the twin's capacity; past 1 the queue grows."""
    from autopoiesis.sandbox import compile_policy

    shape = dict(hidden=64, layers=2, heads=2, vocab=256, max_batch=8, kv_tokens=2048, max_prompt=512,
                 max_output=64, device=DEVICE)
    results = {}
    for factor in (0.5, 1.5):
        adapter = EngineAdapter(scenario="steady", load_factor=factor, duration=60.0, **shape)
        adapter.costs = small_engine.fitted_costs()  # the same model: timed once
        snapshot = adapter.snapshot(0)
        capacity = adapter.capacity()
        assert adapter.rate == pytest.approx(factor * capacity)
        assert len(snapshot.params["requests"]) == pytest.approx(factor * capacity * 60, rel=0.2)
        fcfs = compile_policy(adapter.baselines()["fcfs"].source, adapter.slots())
        results[factor] = adapter.evaluate(fcfs, snapshot)["mean_ttft"]
    assert results[1.5] > 5 * results[0.5]  # below capacity queues stay short; past it they grow all run


def test_options_are_checked_with_one_line_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n")
    with pytest.raises(AdapterError, match="empty.csv: the trace has no requests"):
        load_adapter("engine", {"trace": str(empty)}).load(0)
    for options, message in (({"scenario": "nope"}, "unknown engine load 'nope'"),
                             ({"hidden": 100, "heads": 3}, "multiple of heads"),
                             ({"rate": 0}, "rate must be positive"),
                             # every request was dropped and the run served nothing, silently
                             ({"kv_tokens": 10}, r"kv_tokens \(10\) must be larger than max_prompt \(1024\)"),
                             ({"load_factor": -1}, "load_factor must be positive"),
                             ({"rate": 2, "load_factor": 0.5}, "not both"),
                             ({"trace": "/no/such.csv"}, "trace file not found")):
        with pytest.raises(AdapterError, match=message):
            load_adapter("engine", options)
    if not torch.cuda.is_available():
        with pytest.raises(AdapterError, match="no CUDA GPU"):
            load_adapter("engine", {"device": "cuda"}).fitted_costs()


def test_without_torch_the_engine_says_so_in_one_line(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from autopoiesis.cli import main; "  # as if not installed
            f"sys.exit(main(['evolve', '--adapter', 'engine', '--runs-dir', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "needs torch" in proc.stderr and "autopoiesis[engine]" in proc.stderr


def test_the_cli_evolves_the_engine_offline_and_online(tmp_path):
    common = [sys.executable, "-m", "autopoiesis.cli", "evolve", "--adapter", "engine", "--scenario", "burst",
              "-o", "hidden=64", "-o", "layers=2", "-o", "heads=2", "-o", "vocab=256", "-o", f"device={DEVICE}",
              "--runs-dir", str(tmp_path),
              "--workers", "1", "--json"]
    offline = subprocess.run(common + ["--population", "6", "--generations", "2", "--train-snapshots", "2",
                                       "--held-out-snapshots", "2", "--rate", "6", "--duration", "30"],
                             capture_output=True, text=True, timeout=240)
    assert offline.returncode == 0, offline.stderr[-2000:]
    result = json.loads(offline.stdout)
    assert result["evaluations"] >= 6 and result["champion"]
    online = subprocess.run(common + ["--online", "--rate", "8", "--duration", "16", "--window", "4", "--period", "1",
                                      "--history", "1"], capture_output=True, text=True, timeout=240)
    assert online.returncode == 0, online.stderr[-2000:]
    summary = json.loads(online.stdout)
    assert summary["windows"] >= 4 and summary["evolutions"] >= 1 and summary["requests"] > 50
    assert (tmp_path / summary["run"] / "online.png").is_file()
    bad = subprocess.run([a if a != "burst" else "nope" for a in common], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown engine load 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_one_c_call_that_never_ends_costs_the_decision_process_not_the_live_engine(small_engine, tmp_path):
    """The engine serves deployed programs from decision processes (``isolate_policies``).
    In the serving process this program's third request would hold the serving thread for
    minutes (one C call: 10,000 sums of 18 ms, which no deadline between bytecodes stops)."""
    adapter = small_engine
    adapter.run_dir = str(tmp_path)
    assert adapter.isolate_policies
    hanging = Program("def priority(request, now):\n    if request.id == 2:\n"
                      "        return max([[0] * 10 ** 6] * 10 ** 5)[0]\n"
                      "    return request.arrival\n", name="hanging")
    adapter.start(seed=7)
    try:
        adapter.deploy(hanging, [adapter.baselines()["fcfs"]])
        child = adapter.live["hot"]._policies[0]
        records, calls, fallbacks = [], 0, 0
        while True:
            obs = adapter.observe(adapter.now() + 2.0)
            records += obs.records
            calls += obs.calls.get("priority", 0)
            fallbacks += obs.fallbacks.get("priority", 0)
            if obs.finished:
                break
        errors = list(adapter.live["hot"].errors)
        adapter.deploy(adapter.baselines()["fcfs"], [adapter.baselines()["fcfs"]])
        replaced = adapter.live["hot"]._policies[0]
        assert replaced.pid != child.pid and ended(child.pid)
    finally:
        adapter.stop()
    assert ended(replaced.pid)  # stop ends the decision processes
    load = adapter.load(7)
    assert sorted(r.request_id for r in records) == list(range(len(load))) and calls == len(load)
    assert fallbacks == len(load) - 2  # from the third request on: the process that ran it is gone
    assert "CPU limit" in child.lost and any("CPU limit" in e for e in errors)
