"""The vLLM adapter: evolve request routing and queue order against real vLLM servers.

``autopoiesis evolve --adapter vllm --vllm-launch MODEL_DIR --replicas 2 --online``
launches the servers (or ``--vllm-url URL`` attaches to running ones), puts the router
in front of them, drives it with a load (``--scenario``/``--trace``; or none, for real
clients calling the router), and lets the online controller evolve ``dispatch`` and
``priority`` on the calibrated twin and hot-swap winners under the guard.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import time
import urllib.parse
from pathlib import Path
from typing import Any

from autopoiesis.adapters.base import Adapter, AdapterError
from autopoiesis.metrics import SLO, WINDOW_METRICS, Objective, Observation, RollingWindow, Snapshot

from . import load as loads, servers as fleet, twin
from .slots import SLOTS

__all__ = ["VLLMAdapter"]

TWIN_WAIT_S = 10.0  # the wait for a window's replays (live 0.002-0.32 s, 5.9 s under a stall): the router serves on
TWIN_CPU_S = 5.0  # CPU a window's replays may take before the kernel ends their worker


ATTACH_WAIT_S = 30.0  # an attached server should be up already: how long to wait for its /health


def _urls(value: Any) -> list[str]:
    """``--vllm-url`` values (repeated or comma-separated), each an http(s) URL with a host."""
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    urls = [str(u).strip() for u in items if str(u).strip()]
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise AdapterError(f"--vllm-url must be an http:// or https:// URL such as http://127.0.0.1:8000, got '{url}'")
    return urls


def _max_num_seqs(vllm_args: str, default: int = 256) -> int:
    """The servers' ``--max-num-seqs`` from the launch arguments (vLLM's default otherwise)."""
    words = shlex.split(vllm_args or "")
    for i, word in enumerate(words):
        value = word.partition("=")[2] if word.startswith("--max-num-seqs=") else \
            (words[i + 1] if word == "--max-num-seqs" and i + 1 < len(words) else None)
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return default


PROBE_S = 10.0  # more full-batch waves until the probe has lasted this long (docs/vllm.md, "How much load")
PROBE_MAX_REQUESTS = 400  # ...or has sent this many: a fast fleet is measured well before


def probe_waves(replicas: int, max_batch: int) -> list[int]:
    """The probe's fewest waves (requests sent at once, each after the last is done); see ``_size_load``."""
    per_server = min(max_batch, 4)
    waves = [replicas] * 2 + [replicas * per_server] * 2
    while sum(waves) + replicas * min(2 * per_server, max_batch) < 2 * twin.MIN_POINTS:
        waves.append(replicas * per_server)  # a small fleet: more waves, so each line gets its points
    return waves + [replicas * per_server * 2]


def _publish(live: dict, program) -> None:
    """Hand ``program`` to the in-engine plugin (None withdraws it); it looks within 50 ms."""
    path = live["policy_file"]
    if path is not None:
        live["version"] += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": live["version"], "program": program.id if program else "",
                                   "source": program.source if program else "",
                                   "epoch_unix": time.time() - live["router"].now()}))
        os.replace(tmp, path)


class VLLMAdapter(Adapter):
    """Real vLLM servers (attached or launched) behind an evolving router and in-engine scheduler."""

    name = "vllm"
    objectives = (Objective("mean_e2e", "min"), Objective("mean_ttft", "min"), Objective("p99_ttft", "min"),
                  Objective("slo_attainment", "max"))
    metrics = WINDOW_METRICS
    headline = ("mean_e2e", "mean_ttft", "p99_ttft", "slo_attainment", "throughput_tps")
    isolate_policies = True  # decisions per request: a round trip each is cheap next to serving
    guard_metric = "mean_e2e_open"
    wall_clock = True  # real servers; the router and the load run in observe's event loop
    online_only = True  # programs are scored on windows recorded from the live servers

    def __init__(self, urls: Any = None, launch: str | None = None, replicas: int = 1, python: str | None = None,
                 vllm_args: str = "", plugin: bool = False, scenario: str | None = None, trace: str | None = None,
                 rate: float | None = None, load_factor: float | None = None, duration: float = 120.0,
                 time_scale: float = 1.0, token_scale: float = 1.0, model: str | None = None, port: int = 0,
                 max_batch: int | None = None, run_dir: str | None = None, ttft_slo: float = 2.0,
                 tpot_slo: float = 0.1, start_timeout: float | None = None):
        self.urls, self.launch = _urls(urls), launch
        if bool(self.urls) == bool(launch):
            raise AdapterError("the vLLM adapter needs either --vllm-url URL (attach; repeatable) "
                               "or --vllm-launch MODEL_DIR (launch)")
        if launch and int(replicas) < 1:
            raise AdapterError("--replicas must be at least 1")
        if self.urls and int(replicas) not in (1, len(self.urls)):
            raise AdapterError(f"--replicas {replicas} applies to --vllm-launch; with --vllm-url each URL is a "
                               f"replica (got {len(self.urls)})")
        if scenario and trace:
            raise AdapterError("give a load as --scenario NAME or --trace FILE, not both")
        if scenario and scenario not in loads.LOADS:
            raise AdapterError(f"unknown vLLM load '{scenario}' (known: {', '.join(loads.LOADS)}; or --trace FILE)")
        if trace and not Path(trace).is_file():
            raise AdapterError(f"trace file not found: {trace}")
        if rate is not None and load_factor is not None:
            raise AdapterError("give the load's rate as --rate REQ_PER_S or --load-factor F, not both")
        if load_factor is not None and not (scenario or trace):
            raise AdapterError("--load-factor sizes the adapter's own load: give --scenario NAME or --trace FILE")
        if load_factor is not None and not float(load_factor) > 0:
            raise AdapterError(f"--load-factor must be positive, got {load_factor}")
        if plugin and self.urls and not os.environ.get("AUTOPOIESIS_POLICY_FILE"):
            raise AdapterError("with --vllm-url and --plugin, set AUTOPOIESIS_POLICY_FILE to the policy file the "
                               "servers were started with (docs/vllm.md)")
        self.replicas = int(replicas) if launch else len(self.urls)
        self.python, self.vllm_args, self.plugin = python, vllm_args, bool(plugin)
        self.scenario, self.trace = scenario, trace
        self.rate, self.duration = float(2.0 if rate is None else rate), float(duration)
        self.load_factor = None if load_factor is None else float(load_factor)
        self.load_description = ""  # what start() sends, at what rate (and how the rate was found)
        self.time_scale, self.token_scale = float(time_scale), float(token_scale)
        self.model = model or (Path(launch).name if launch else None)
        self.max_model_len: int | None = None  # the servers' context, read from /v1/models at start()
        self.port = int(port)
        # how long the servers may take to answer /health: launched ones load a model, attached ones are up
        self.start_timeout = float(start_timeout) if start_timeout is not None else 600.0 if launch else ATTACH_WAIT_S
        self.max_batch = int(max_batch) if max_batch else _max_num_seqs(vllm_args)
        self.run_dir = run_dir
        self.slo = SLO(float(ttft_slo), float(tpot_slo))
        self.costs = twin.Costs(max_batch=self.max_batch)  # what candidates are scored with
        self.fitted = self.costs  # the last least-squares fit, before scaling: twin.refit's anchor
        self.live: dict[str, Any] | None = None
        self.policy_file: Path | None = None

    def slots(self):
        return list(SLOTS)

    # -- scoring: windows of the live servers, replayed on the twin -----------------------
    def snapshot(self, seed: int) -> Snapshot:
        raise AdapterError("the vLLM adapter scores programs on windows recorded from the live servers: "
                           "run `autopoiesis evolve --adapter vllm ... --online`")

    def evaluate(self, policy, snapshot: Snapshot):
        return twin.score(policy, dict(snapshot.params))

    def summarize(self, snapshot: Snapshot) -> str:
        p = snapshot.params
        span = max(1e-9, p["until"] - p["since"])
        prompts = sorted(r[1] for r in p["requests"]) or [0]
        c = p["costs"]
        return (f"A live window of {p['replicas']} vLLM server(s), {p['since']:.0f}-{p['until']:.0f} s: "
                f"{len(p['requests'])} requests ({len(p['requests']) / span:.2f}/s, queued ones included), prompt "
                f"tokens median {prompts[len(prompts) // 2]}, max {prompts[-1]}. Measured costs: prefill "
                f"{c['prefill_base_s'] * 1e3:.1f} ms + {c['prefill_per_token_s'] * 1e6:.1f} us/token, decode step "
                f"{c['decode_base_s'] * 1e3:.1f} ms + {c['decode_per_seq_s'] * 1e3:.2f} ms/sequence; at most "
                f"{c['max_batch']} sequences run at once per server.")

    # -- the live system ------------------------------------------------------------------
    def start(self, seed: int = 1000) -> None:
        from autopoiesis import decision_process

        from .router import Router

        if self.isolate_policies:  # they start while the servers do; the first deployment takes them
            decision_process.start_spares()
        run_dir = Path(self.run_dir or Path("runs") / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.mkdir(parents=True, exist_ok=True)
        policy_file = Path(os.environ["AUTOPOIESIS_POLICY_FILE"]) if self.plugin and self.urls else \
            (run_dir / "policy.json" if self.plugin else None)
        if self.launch:
            servers = fleet.launch(self.launch, self.replicas, run_dir, self.python, self.vllm_args,
                                   policy_file, self.model)
        else:
            servers = fleet.attach(self.urls)
        self.policy_file = policy_file
        live = self.live = {"servers": servers, "policy_file": policy_file, "version": 0, "plugin_counts": {},
                            "loop": asyncio.new_event_loop(), "records": [], "load": None, "outcome": None,
                            "log": open(run_dir / "requests.jsonl", "a", buffering=1)}
        try:
            if self.isolate_policies:  # its imports (0.6 s) while the servers start, not in the first window
                worker = self._twin_worker()
                worker.wait_s = decision_process.START_S
                worker.run(f"{twin.__name__}:window", [], 0.0, 0.0)
                worker.wait_s = TWIN_WAIT_S
            fleet.wait_ready(servers, self.start_timeout)
            router = live["router"] = Router([s.url for s in servers], "plugin" if self.plugin else "request")
            router.on_record = self._log
            live["loop"].run_until_complete(router.start(port=self.port))
            card = self._model_card()
            self.model = self.model or card["id"]
            context = card.get("max_model_len")  # vLLM's card says it; longer requests get a 400
            self.max_model_len = context if isinstance(context, int) and context > 0 else None
            sizing = self._size_load(seed, run_dir) if self.load_factor is not None else ""
            load = self._load(seed)
            if load is not None:
                self.load_description = load.description + (f" ({sizing})" if sizing else "")
                live["load"] = live["loop"].create_task(
                    loads.replay(load, router.url, self.model, self.time_scale))
        except BaseException:
            self.stop()
            raise

    def _load(self, seed: int):
        """The load to send: prompts cut so that a prompt and its longest output fit the servers'
        context (``max_model_len``), since vLLM refuses a longer request outright (in a context
        under twice the longest output, each gets half)."""
        fits = {}
        if self.max_model_len:
            output = max(1, min(loads.MAX_OUTPUT, self.max_model_len // 2))
            fits = {"max_prompt": max(1, min(loads.MAX_PROMPT, self.max_model_len - output)), "max_output": output}
        try:
            if self.trace:
                return loads.from_trace(self.trace, self.rate, self.duration, self.token_scale, **fits)
            if self.scenario:
                return loads.named(self.scenario, self.rate, self.duration, seed, **fits)
        except ValueError as e:
            raise AdapterError(str(e)) from None
        return None

    def _size_load(self, seed: int, run_dir: Path) -> str:
        """Set ``rate`` to ``load_factor`` times the fleet's capacity for this load's length mix.

        Before the load starts, a probe sends the load's own shapes (each wave spread over its
        prompt lengths) in waves: one request per server, twice; full batches (up to 4 per
        server), twice or more, until twice ``twin.MIN_POINTS`` requests will have found a free
        slot (a merged stream does not count, see ``twin.streamed``), and on until the probe has
        lasted ``PROBE_S`` or sent ``PROBE_MAX_REQUESTS``; then twice a full batch at once, so
        queues form. The twin is fitted to the probe and
        scaled to replay it as it was served (``twin.refine``); its capacity for the whole
        load's mix, times ``load_factor``, is the mean rate. The probe stays out of the
        run's records; its fit is the twin's first.
        """
        shapes = sorted(self._load(seed).requests, key=lambda r: r[1])
        if not shapes:
            raise AdapterError("--load-factor: the load has no requests to size (a longer --duration?)")
        router, since, rng = self.router, self.router.now(), random.Random(seed)
        *waves, overload = probe_waves(self.replicas, self.max_batch)
        probe: list = []
        router.on_record = probe.append

        def send(size: int) -> None:  # a wave spread over the prompt lengths, one draw per quantile band
            wave = [shapes[int((k + rng.random()) * len(shapes) / size)] for k in range(size)]
            rng.shuffle(wave)
            self.live["loop"].run_until_complete(
                loads.replay(loads.Load("probe", [(0.0, p, o) for _, p, o in wave]), router.url, self.model))

        try:
            for size in waves:
                send(size)
            while router.now() - since < PROBE_S and sum(waves) + waves[-1] + overload <= PROBE_MAX_REQUESTS:
                send(waves[-1])
                waves.append(waves[-1])
            send(overload)
        finally:
            router.on_record = self._log
            router.take()  # the probe is not part of the run
            self._plugin_counts()
        sent, probe_s = sum(waves) + overload, router.now() - since
        ok = sum(r.ok for r in probe)
        fitted = twin.fit(probe, self.max_batch)
        if not fitted.samples:
            raise AdapterError(f"--load-factor: the servers answered {ok} of the {sent} probe requests, too few to "
                               f"measure their capacity (see the servers' logs in {run_dir})")
        self.fitted = fitted
        self.costs = twin.refine(fitted, twin.ROUTER_DEFAULT, probe, since, router.now(), self.replicas)
        capacity = twin.capacity(shapes, self.replicas, self.costs)
        mean_factor = 1.0 if self.trace else sum(share * factor for share, factor, _ in loads.LOADS[self.scenario][1])
        self.rate = self.load_factor * capacity / mean_factor
        (run_dir / "calibration.json").write_text(json.dumps({
            "load_factor": self.load_factor, "capacity_rps": capacity, "mean_rate": self.load_factor * capacity,
            "rate": self.rate, "probe_requests": sent, "probe_ok": ok, "probe_s": probe_s,
            "probe_merged_streams": twin.merged(probe),
            "fitted": fitted.to_dict(), "costs": self.costs.to_dict()}, indent=1))
        return (f"load factor {self.load_factor:g}: {self.load_factor * capacity:.2f} req/s on average, the twin's "
                f"capacity for this length mix being {capacity:.2f} req/s, fitted on a {sent}-request, "
                f"{probe_s:.0f} s probe")

    def _model_card(self) -> dict:
        """The first model the servers serve, as their /v1/models describes it; where that cannot
        be read and the model was named, an empty card (the model's name is all it is needed for)."""
        import urllib.request

        try:
            with urllib.request.urlopen(self.live["servers"][0].url + "/v1/models", timeout=10) as r:
                return json.load(r)["data"][0]
        except (OSError, ValueError, LookupError, TypeError):
            if self.model is None:
                raise
            return {}

    def _log(self, record) -> None:
        self.live["records"].append(record)
        self.live["log"].write(json.dumps(record.__dict__) + "\n")

    @property
    def router(self):
        if not self.live or "router" not in self.live:
            raise AdapterError("the vLLM adapter's live system is not started (call start())")
        return self.live["router"]

    def now(self) -> float:
        return self.router.now()

    def observe(self, until: float) -> Observation:
        router, loop = self.router, self.live["loop"]
        loop.run_until_complete(asyncio.sleep(max(0.0, until - router.now())))
        records, samples, events, arrivals = router.take()
        calls, fallbacks, stalls = router.policy.take_counts() if router.policy is not None else ({}, {}, 0)
        for slot, (c, f, s) in self._plugin_counts().items():
            calls[slot] = calls.get(slot, 0) + c
            fallbacks[slot] = fallbacks.get(slot, 0) + f
            stalls += s
        task = self.live["load"]
        finished = task is not None and task.done() and not router.open
        if task is not None and task.done() and self.live["outcome"] is None:
            self.live["outcome"] = task.result()
        return Observation(now=router.now(), records=records, samples=samples, events=events,
                           arrivals=len(arrivals), arrival_prompts=arrivals,
                           calls=calls, fallbacks=fallbacks, stalls=stalls, finished=finished,
                           in_flight=sorted(call.arrival for call in router.open.values()))

    def _plugin_counts(self) -> dict[str, tuple[int, int, int]]:
        """New in-engine priority calls, fallbacks and stalls since the last look, from the plugin's status files."""
        path = self.live["policy_file"]
        if path is None:
            return {}
        seen, calls, fallbacks, stalls = self.live["plugin_counts"], 0, 0, 0
        for status in path.parent.glob(path.name + ".status-*"):
            if status.name.endswith(".tmp"):
                continue
            try:
                data = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            before = seen.get(status.name, (0, 0, 0))
            calls += max(0, data["calls"] - before[0])
            fallbacks += max(0, data["fallbacks"] - before[1])
            stalls += max(0, data.get("stalls", 0) - before[2])
            seen[status.name] = (data["calls"], data["fallbacks"], data.get("stalls", 0))
        return {"priority": (calls, fallbacks, stalls)} if calls else {}

    def plugin_status(self) -> list[dict]:
        """Each plugin-loaded server's counts (readable after ``stop`` too)."""
        path = self.policy_file
        return [json.loads(p.read_text()) for p in sorted(path.parent.glob(path.name + ".status-*"))
                if not p.name.endswith(".tmp")] if path else []

    def deploy(self, program, fallbacks=()) -> None:
        from autopoiesis.hot_path import hot_path

        router = self.router
        checks = {"dispatch": lambda r, args: isinstance(r, int) and 0 <= r < len(args[1])}
        previous, router.policy = router.policy, hot_path(program, list(fallbacks), self.slots(), checks,
                                                          isolate=self.isolate_policies)
        router.policy.carry_counts(previous)
        if previous is not None:
            previous.close()
        _publish(self.live, program)

    def window_snapshot(self, since: float, until: float, incumbent) -> Snapshot:
        up = [r.index for r in self.router.replicas if r.up]
        requests = twin.snapshot_requests(self.live["records"], self.router.open.values(), since, until, up)
        replicas = max(1, len(up))
        params = {"kind": "window", "since": since, "until": until, "requests": requests,
                  "replicas": replicas, "costs": self.costs.to_dict(),
                  "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s}}
        return Snapshot(self.name, params, label=f"vllm live {since:.0f}-{until:.0f} s")

    def window_metrics(self, since: float, until: float, incumbent) -> dict[str, float]:
        """The twin's error predicting this window (with costs fitted before it), then a refit on it.

        The error is out of sample: the costs come from earlier windows, the latency from this
        one. The refit (least squares, then scaled to replay what was served) is what the next
        evolution's candidates are scored with. ``twin_late``: the replays were not back in
        ``TWIN_WAIT_S``, so this window has neither.
        """
        from autopoiesis.decision_process import GaveUp
        from autopoiesis.sandbox import DeadlinePassed

        records = self.live["records"]
        replicas = max(1, sum(r.up for r in self.router.replicas))
        out = {"replicas_up": float(replicas)}
        worker = None
        try:  # the replays call the program: in the twin's worker process (in-process with --no-isolate)
            if self.live.get("twin_ended_by") == incumbent.id:
                raise RuntimeError("this program ended the twin's worker: not replayed again")
            fitted = twin.fit(records, self.fitted.max_batch, self.fitted)  # least squares: no program runs
            args = (incumbent.source, next(iter(self.baselines().values())).source,
                    twin.window(records, since, until)[2], since, until, replicas,
                    self.costs if self.costs.samples else None, fitted)
            worker = self._twin_worker()
            error, scaled = self._serving_meanwhile(worker.run, f"{twin.__name__}:replayed", *args) if worker \
                else twin.replayed(*args)
            if error is not None:
                out["twin_error"] = error
            self.fitted, self.costs = fitted, scaled
        except (Exception, DeadlinePassed) as e:  # noqa: BLE001 - the twin's view is a report: the costs stay
            if isinstance(e, GaveUp):
                out["twin_late"] = 1.0
            if worker is not None and worker.lost:  # each window would wait for the CPU limit
                self.live["twin_ended_by"] = incumbent.id
        out["twin_samples"] = float(self.costs.samples)
        return out

    def _serving_meanwhile(self, fn, *args):
        """``fn(*args)`` on a thread while the router's loop serves on: the wait for a window's
        replays (a busy machine stretches it to seconds) pauses no request and no arrival."""
        loop = self.live["loop"]
        return loop.run_until_complete(loop.run_in_executor(None, fn, *args))

    def _twin_worker(self):
        """The process the twin's replays of each window run in (None: in this one, ``--no-isolate``);
        a new one if the last was lost (a program ended it)."""
        from autopoiesis.decision_process import Worker

        if not self.isolate_policies:
            return None
        worker = self.live.get("twin_worker")
        if worker is None or worker.lost:
            worker = self.live["twin_worker"] = Worker(wait_s=TWIN_WAIT_S, cpu_s=TWIN_CPU_S)
        return worker

    def live_metrics(self) -> dict[str, float]:
        window = RollingWindow()
        for record in self.live["records"] if self.live else []:
            window.add(record)
        return window.summary(self.slo) if window.records else {}

    def stop(self) -> None:
        live, self.live = self.live, None
        if not live:
            return
        loop = live["loop"]
        try:
            if live.get("load") is not None and not live["load"].done():
                live["load"].cancel()
                loop.run_until_complete(asyncio.gather(live["load"], return_exceptions=True))
            if "router" in live:
                loop.run_until_complete(live["router"].stop())
                if self.urls:  # attached servers outlive this run: no program stays in them unguarded
                    _publish(live, None)
        finally:
            loop.close()
            live["log"].close()
            fleet.stop(live["servers"])
            if getattr(live.get("router"), "policy", None) is not None:
                live["router"].policy.close()  # the decision processes
            if live.get("twin_worker") is not None:
                live["twin_worker"].close()
        self.served = live["records"]  # what was served stays readable after stop (reports, tests)

    def __getstate__(self):  # worker processes need the twin, not the live system
        return {k: v for k, v in self.__dict__.items() if k not in ("live", "served")}
