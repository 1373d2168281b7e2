"""The engine adapter: a small torch continuous-batching engine that serves in this process.

``autopoiesis evolve --adapter engine --scenario burst --online`` builds a random-weight
decoder (``model.TinyLM``) on the CPU (or ``-o device=cuda``), times its prefill and decode
steps to fit the twin's ``Costs``, replays a load at real time and evolves the queue order
(``priority``) while it serves. The twin is the same ``engine.Engine`` with the fitted step
costs in place of the model, so a window replays under the scheduling code that served it.
Offline evolution works too: the load's seeds are scored on the twin.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autopoiesis.adapters.base import Adapter, AdapterError
from autopoiesis.metrics import SLO, WINDOW_METRICS, EngineSample, Objective, Observation, RollingWindow, Snapshot
from autopoiesis.program import slot_code_id
from autopoiesis.traces import phased, rescaled

from .engine import Config, Costs, Engine, Request, fit, replay, scale, shape
from .slots import SLOTS

__all__ = ["EngineAdapter"]

# name: (description, phases: (share of the duration, rate factor, share of long requests))
LOADS = {
    "steady": ("constant rate, 20% long requests", [(1.0, 1.0, 0.2)]),
    "shift": ("the rate rises by half and long requests triple halfway", [(0.5, 0.8, 0.1), (0.5, 1.2, 0.3)]),
    "burst": ("a burst at three times the rate in the middle fifth", [(0.4, 0.75, 0.2), (0.2, 2.25, 0.2),
                                                                       (0.4, 0.75, 0.2)]),
}
SHORT, LONG = (48, 0.6, 24, 0.6), (480, 0.3, 96, 0.4)  # (prompt median, sigma, output median, sigma)
STEPS_KEPT = 2000  # the live steps the twin's cost level follows (about 10-40 s of serving)


def score(policy: Any, params: dict) -> dict[str, float]:
    """The metrics of ``policy`` serving a snapshot's requests on the twin.

    A window check's snapshot (``EngineAdapter.window_check``) also carries which requests
    were served in the window and their mean latency: ``twin_error`` is the twin's error on it.
    """
    served = params.get("served")
    requests = [tuple(r) for r in params["requests"]]  # a check's are in arrival order already: served indexes them
    records = replay(policy, requests if served else sorted(requests), Config(**params["config"]),
                     Costs(**params["costs"]))
    window = RollingWindow()
    for record in records:
        window.add(record)
    metrics = window.summary(SLO(**params["slo"]))
    if not records:
        metrics = {**dict.fromkeys(WINDOW_METRICS, 0.0), "slo_attainment": 1.0}  # any objective has a value
    if served:
        predicted = statistics.fmean(records[i].e2e for i in served)
        metrics["twin_error"] = abs(predicted - params["observed_e2e"]) / params["observed_e2e"]
    return metrics


class EngineAdapter(Adapter):
    """A small torch continuous-batching engine in this process; evolves its queue order."""

    name = "engine"
    objectives = (Objective("mean_e2e", "min"), Objective("mean_ttft", "min"), Objective("p99_ttft", "min"),
                  Objective("slo_attainment", "max"))
    metrics = (*WINDOW_METRICS, "twin_error")  # twin_error: on a window check's snapshot only
    headline = ("mean_e2e", "mean_ttft", "p99_ttft", "slo_attainment", "throughput_tps")
    isolate_policies = True  # decisions per request: a round trip each is cheap next to serving
    guard_metric = "mean_e2e_open"
    wall_clock = True  # it serves at real time, inside observe

    def __init__(self, scenario: str = "burst", trace: str | None = None, rate: float | None = None,
                 load_factor: float | None = None, duration: float = 120.0,
                 token_scale: float = 1.0, device: str = "cpu", threads: int = 1, max_batch: int = 16,
                 kv_tokens: int = 4096, max_prompt: int = 1024, max_output: int = 256, vocab: int = 2048,
                 hidden: int = 256, layers: int = 4, heads: int = 4, model_seed: int = 0, ttft_slo: float = 1.0,
                 tpot_slo: float = 0.05, run_dir: str | None = None):
        if trace is None and scenario not in LOADS:
            raise AdapterError(f"unknown engine load '{scenario}' (known: {', '.join(LOADS)}; or -o trace=FILE)")
        if trace is not None and not Path(trace).is_file():
            raise AdapterError(f"trace file not found: {trace}")
        if rate is not None and load_factor is not None:
            raise AdapterError("give the load's rate as --rate REQ_PER_S or --load-factor F, not both")
        rate = 3.0 if rate is None else rate
        for key, value in (("rate", rate), ("load_factor", 1.0 if load_factor is None else load_factor),
                           ("duration", duration), ("token_scale", token_scale)):
            if not float(value) > 0:
                raise AdapterError(f"{key} must be positive, got {value}")
        for key, value in (("threads", threads), ("max_batch", max_batch), ("kv_tokens", kv_tokens),
                           ("max_prompt", max_prompt), ("max_output", max_output), ("vocab", vocab),
                           ("hidden", hidden), ("layers", layers), ("heads", heads)):
            if int(value) < 1:
                raise AdapterError(f"{key} must be at least 1, got {value}")
        if int(hidden) % int(heads):
            raise AdapterError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        if int(kv_tokens) <= int(max_prompt):  # the load drops prompts the cache cannot hold: all of them, at 10
            raise AdapterError(f"kv_tokens ({kv_tokens}) must be larger than max_prompt ({max_prompt}): a prompt "
                               "the KV cache cannot hold is never served")
        self.scenario, self.trace = scenario, trace
        self.rate, self.duration, self.token_scale = float(rate), float(duration), float(token_scale)
        self.load_factor = None if load_factor is None else float(load_factor)
        self.sized = load_factor is None  # the rate is final (under --load-factor: once the model is timed)
        self.device, self.threads = str(device), int(threads)
        self.config = Config(int(max_batch), int(kv_tokens), int(max_prompt), int(max_output))
        self.model_shape = {"vocab": int(vocab), "hidden": int(hidden), "layers": int(layers), "heads": int(heads)}
        self.model_seed = int(model_seed)
        self.slo = SLO(float(ttft_slo), float(tpot_slo))
        self.run_dir = run_dir
        self.costs: Costs | None = None  # fitted to the model on first use
        self.executor = None
        self.live: dict[str, Any] | None = None

    def slots(self):
        return list(SLOTS)

    # -- the model and its costs ----------------------------------------------------------
    def _executor(self):
        if self.executor is None:
            try:
                from .model import Shape, TorchExecutor
            except ImportError as e:
                raise AdapterError(f"the engine adapter needs torch ({e}): pip install 'autopoiesis[engine]'") from None
            try:
                self.executor = TorchExecutor(Shape(**self.model_shape), self.config.max_batch,
                                              self.config.max_prompt + self.config.max_output, self.device,
                                              self.model_seed, self.threads)
            except RuntimeError as e:
                raise AdapterError(str(e)) from None
        return self.executor

    def fitted_costs(self) -> Costs:
        """The twin's step costs, timed on this machine's model once (a few seconds)."""
        if self.costs is None:
            executor = self._executor()  # first: without torch, a one-line error
            from .model import calibrate

            self.costs = fit(calibrate(executor, self.config))
        return self.costs

    def capacity(self, requests: int = 600) -> float:
        """Requests per second the twin serves, in fcfs order, of the load's length mix all waiting at once.

        The mix of the built-in loads (20% long requests on average in each), or the trace's
        own requests. ``load_factor`` multiplies it, so a load means the same on any model
        and device.
        """
        from autopoiesis.sandbox import compile_policy

        mix = self._requests(3.0, 0) if self.trace else self._within_limits(phased(
            LOADS["steady"][1], 1.0, float(requests), 0, SHORT, LONG, self.config.max_prompt, self.config.max_output,
            min_output=1))
        waiting = [(i * 1e-9, p, m) for i, (_, p, m) in enumerate(mix)]  # all at once, still in the order they came
        if not waiting:
            raise AdapterError(f"the trace {self.trace} has no requests to size a load on")
        fcfs = compile_policy(self.baselines()["fcfs"].source, self.slots())
        return len(waiting) / score(fcfs, self._params(waiting))["total_time"]

    # -- scoring --------------------------------------------------------------------------
    def load(self, seed: int) -> list[tuple[float, int, int]]:
        """(arrival s, prompt tokens, max_tokens) of the load for ``seed``, within the engine's limits."""
        if not self.sized:  # on first use: timing the model takes seconds
            self.rate, self.sized = self.load_factor * self.capacity(), True
        return self._requests(self.rate, seed)

    def _requests(self, rate: float, seed: int) -> list[tuple[float, int, int]]:
        cfg = self.config
        if self.trace:
            try:
                requests = rescaled(Path(self.trace), rate, self.duration, self.token_scale, cfg.max_prompt,
                                    cfg.max_output, min_output=1)
            except ValueError as e:  # a TraceError names the file and the line
                raise AdapterError(str(e)) from None
        else:
            requests = phased(LOADS[self.scenario][1], rate, self.duration, seed, SHORT, LONG, cfg.max_prompt,
                              cfg.max_output, min_output=1)
        return self._within_limits(requests)

    def _within_limits(self, requests):
        """Requests whose prompt fits the KV cache, their ``max_tokens`` clipped to what is left of it."""
        kv = self.config.kv_tokens
        return [(a, p, min(m, kv - p)) for a, p, m in requests if p < kv]

    def _params(self, requests, **extra) -> dict:
        return {"requests": requests, "config": asdict(self.config), "costs": self.fitted_costs().to_dict(),
                "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s}, **extra}

    def snapshot(self, seed: int) -> Snapshot:
        requests = self.load(seed)  # first: it sizes the rate under --load-factor
        label = f"{self.trace or self.scenario} at {self.rate:g} req/s, seed {seed}"
        return Snapshot(self.name, self._params(requests, kind="load", seed=seed), label=label)

    def evaluate(self, policy, snapshot: Snapshot):
        return score(policy, dict(snapshot.params))

    def summarize(self, snapshot: Snapshot) -> str:
        p = snapshot.params
        requests = p["requests"]
        span = max((r[0] for r in requests), default=0.0) or 1.0
        prompts = sorted(r[1] for r in requests) or [0]
        outputs = sorted(r[2] for r in requests) or [0]
        c, cfg = p["costs"], p["config"]
        return (f"One engine, {len(requests)} requests over {span:.0f} s ({len(requests) / span:.2f}/s); prompt "
                f"tokens median {prompts[len(prompts) // 2]}, max {prompts[-1]}; max_tokens median "
                f"{outputs[len(outputs) // 2]}, max {outputs[-1]}. At most {cfg['max_batch']} sequences run and "
                f"{cfg['kv_tokens']} KV tokens are reserved at once. Step costs: prefill "
                f"{c['prefill_base_s'] * 1e3:.2f} ms + {c['prefill_per_token_s'] * 1e6:.1f} us/token; decode "
                f"{c['decode_base_s'] * 1e3:.2f} ms + {c['decode_per_seq_s'] * 1e3:.3f} ms/sequence + "
                f"{c['decode_per_context_s'] * 1e6:.2f} us per sequence per token of the longest context "
                f"(squared terms in docs/engine.md).")

    # -- the live system ------------------------------------------------------------------
    def start(self, seed: int = 1000) -> None:
        from autopoiesis import decision_process

        if self.isolate_policies:  # up before the clock starts: the first deployment takes them
            decision_process.start_spares()
        costs = self.fitted_costs()  # before the clock starts: timing takes a few seconds
        run_dir = Path(self.run_dir or Path("runs") / f"engine-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.live = {"pending": self.load(seed), "next": 0, "hot": None, "records": [], "new": [], "tokens": 0,
                     "arrived": 0, "requests": [], "costs": costs, "steps": deque(maxlen=STEPS_KEPT),
                     "log": open(run_dir / "requests.jsonl", "a", buffering=1)}
        self.live["engine"] = Engine(self.config, _Shaped(self._executor()), self._priority)
        if self.isolate_policies:
            decision_process.start_spares(wait=True)
        self.live["origin"] = time.monotonic()

    def _live(self) -> dict:
        if self.live is None:
            raise AdapterError("the engine adapter's live system is not started (call start())")
        return self.live

    def _priority(self, request, now: float):
        return self.live["hot"].priority(request, now)

    def now(self) -> float:
        return time.monotonic() - self._live()["origin"]

    def deploy(self, program, fallbacks=()) -> None:
        from autopoiesis.hot_path import hot_path

        live = self._live()
        checks = {"priority": lambda r, args: math.isfinite(float(r))}  # 10**400 falls back, not the engine
        previous, live["hot"] = live["hot"], hot_path(program, list(fallbacks), self.slots(), checks,
                                                      isolate=self.isolate_policies)
        live["hot"].carry_counts(previous)
        if previous is not None:
            previous.close()
        order, live["order"] = live.get("order"), slot_code_id(program.source, "priority")
        if order != live["order"]:  # the backlog keeps its order, ahead of the new program's arrivals
            live["engine"].new_epoch()

    def observe(self, until: float) -> Observation:
        live = self._live()
        if live["hot"] is None:
            raise AdapterError("deploy a program before observing the engine")
        engine, pending = live["engine"], live["pending"]
        while True:
            now = self.now()
            while live["next"] < len(pending) and pending[live["next"]][0] <= now:
                a, p, m = pending[live["next"]]
                request = Request(live["next"], a, p, m)
                live["requests"].append(request)
                engine.add(request, now)
                live["next"] += 1
            if now >= until:
                break
            if engine.busy:
                started = time.perf_counter()
                _, done = engine.step(now)
                for r in done:
                    record = r.record()
                    live["new"].append(record)
                    live["records"].append(record)
                    live["log"].write(json.dumps(record.__dict__) + "\n")
                # what the step cost the serving loop, its bookkeeping included: what the twin must predict
                live["steps"].append((engine.executor.shape, time.perf_counter() - started))
            else:
                upcoming = pending[live["next"]][0] if live["next"] < len(pending) else math.inf
                time.sleep(max(0.0, min(upcoming, until) - now))
        records, live["new"] = live["new"], []
        calls, fallbacks, stalls = live["hot"].take_counts()
        tokens, live["tokens"] = engine.tokens - live["tokens"], engine.tokens
        prompts = [p for _, p, _ in pending[live["arrived"]:live["next"]]]
        arrivals, live["arrived"] = live["next"] - live["arrived"], live["next"]
        waiting = [e[-1] for e in engine.waiting]
        sample = EngineSample(now, 0, running=len(engine.running), waiting=len(waiting),
                              kv_usage=engine.reserved / self.config.kv_tokens, tokens=tokens)
        return Observation(now=now, records=records, samples=[sample], arrivals=arrivals, arrival_prompts=prompts,
                           calls=calls, fallbacks=fallbacks, stalls=stalls,
                           finished=live["next"] >= len(pending) and not engine.busy,
                           in_flight=sorted(r.arrival for r in engine.running + waiting))

    def window_snapshot(self, since: float, until: float, incumbent) -> Snapshot:
        """The requests of [since, until] and the backlog it inherited, for the twin to replay."""
        requests, _ = self._window(since, until)
        params = {**self._params(requests, kind="window", since=since, until=until),
                  "costs": self._live()["costs"].to_dict()}
        return Snapshot(self.name, params, label=f"engine live {since:.0f}-{until:.0f} s")

    def _window(self, since: float, until: float, limit: int = 1000):
        """(requests to replay, indices of those that arrived in the window and finished by ``until``).

        The replay starts at the earliest arrival still unfinished when the window opened.
        """
        arrived = [r for r in self._live()["requests"] if r.arrival <= until]
        start = min((r.arrival for r in arrived if r.arrival < since and not r.finish <= since), default=since)
        pool = [r for r in arrived if r.arrival >= start][-limit:]
        start = pool[0].arrival if pool else since
        served = [i for i, r in enumerate(pool) if r.arrival >= since and r.finish <= until]
        return [(round(r.arrival - start, 6), r.prompt_tokens, r.max_tokens) for r in pool], (served, pool)

    def window_check(self, since: float, until: float, incumbent):
        """The twin's error on this window: a snapshot of it that scoring ``incumbent`` on gives
        ``twin_error``, the twin's mean latency of what was served against the live one.

        The controller scores it on the evolution plane, off the serving thread: the replay is
        a few hundred milliseconds of Python on a small model. It is out of sample: the costs
        are those from before the window (at first, the timing at start), as ``window_metrics``
        rescales them after.
        """
        requests, (served, pool) = self._window(since, until)
        if len(served) < 3:
            return None
        observed = statistics.fmean(pool[i].finish - pool[i].arrival for i in served)
        params = {**self._params(requests, kind="check", since=since, until=until),
                  "costs": self._live()["costs"].to_dict(), "served": served, "observed_e2e": observed}
        return Snapshot(self.name, params, label=f"engine check {since:.0f}-{until:.0f} s"), ("twin_error",)

    def window_metrics(self, since: float, until: float, incumbent) -> dict[str, float]:
        """``cost_scale``: how much longer the last live steps took than the start's costs
        predict (``engine.scale``); the next snapshots (and checks) carry the costs times it."""
        live = self._live()
        out: dict[str, float] = {}
        if live["steps"]:
            out["cost_scale"] = scale(self.fitted_costs(), live["steps"])
            live["costs"] = self.fitted_costs().scaled(out["cost_scale"])
        return out

    def live_metrics(self) -> dict[str, float]:
        window = RollingWindow()
        for record in self.live["records"] if self.live else getattr(self, "served", []):
            window.add(record)
        return window.summary(self.slo) if window.records else {}

    def stop(self) -> None:
        live, self.live = self.live, None
        if live:
            live["log"].close()
            if live["hot"] is not None:
                live["hot"].close()  # the decision processes
            self.served = live["records"]

    def __getstate__(self):  # worker processes need the twin, not the model or the live system
        return {k: v for k, v in self.__dict__.items() if k not in ("live", "served", "executor")}


class _Shaped:
    """The torch executor, noting the shape of the step it runs (the serving loop times it)."""

    def __init__(self, executor):
        self.executor, self.shape = executor, ()

    def step(self, prefill, decode) -> float:
        self.shape = shape(prefill, decode)
        return self.executor.step(prefill, decode)

    def release(self, request) -> None:
        self.executor.release(request)
