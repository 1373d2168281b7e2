"""How well the vLLM twin, refit window by window as the controller refits it, replays a served run.

    python benchmarks/vllm_twin_refit.py [RUN_DIR ...] [--window 30] [--dispatch round_robin]
                                         [--priority fcfs] [--json]

A RUN_DIR is what ``autopoiesis bench|serve|evolve --adapter vllm`` leaves in ``runs/``:
``requests.jsonl`` (every served request) and, after ``--load-factor``, ``calibration.json``
(the probe's costs: the twin's first). Without RUN_DIRs it reads the two runs recorded in
``tests/data/vllm_runs`` (their README says how they were made). No server is started.

The controller's refit is replayed offline, with the function ``VLLMAdapter.window_metrics``
calls: at the end of each ``--window`` the records finished by then are fitted and scaled to
replay that window (``twin.refit``), and the window's out-of-sample prediction error is
taken before the refit. Each run's whole arrival sequence is then
replayed on the twin with the probe's costs and with the last refit's, and compared with
what the servers did: the time from the first arrival to the last finish, and the
mean end-to-end latency. Merged streams (a whole output in one chunk: ``twin.streamed``)
are counted, since the fit leaves them out. Windows and whole runs are replayed with the
policy that served the run: ``--dispatch`` and ``--priority`` name the vLLM adapter's
baselines, and the defaults are what ``bench`` serves without ``--policy`` (its ``default``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from autopoiesis.adapters.vllm import twin
from autopoiesis.adapters.vllm.slots import DISPATCH_BASELINES, PRIORITY_BASELINES, SLOTS
from autopoiesis.metrics import RequestRecord
from autopoiesis.sandbox import compile_policy

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "data" / "vllm_runs"


def read_run(run_dir: Path) -> tuple[list[RequestRecord], tuple[twin.Costs, twin.Costs] | None]:
    """The run's records and its probe's (fitted, scaled) costs (None without calibration.json).

    A ValueError says what is wrong with the folder."""
    path = run_dir / "requests.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no requests.jsonl (not a vLLM run folder)")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                records.append(RequestRecord(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a request record ({e})") from None
    records = [r for r in records if r.ok]
    if len(records) < twin.MIN_POINTS:
        raise ValueError(f"{path}: {len(records)} served requests; the twin needs {twin.MIN_POINTS}")
    calibration = run_dir / "calibration.json"
    if not calibration.is_file():
        return records, None
    try:
        probe = json.loads(calibration.read_text())
        return records, (twin.Costs(**probe["fitted"]), twin.Costs(**probe["costs"]))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{calibration}: unreadable ({e})") from None


def baseline(dispatch: str, priority: str):
    """The vLLM adapter's human-designed dispatch and priority, compiled as one policy."""
    return compile_policy(DISPATCH_BASELINES[dispatch] + "\n\n" + PRIORITY_BASELINES[priority], SLOTS)


def whole_run(records: list[RequestRecord], policy, replicas: int, costs: twin.Costs) -> dict[str, float]:
    """The twin's total time and mean end-to-end latency for the run's own arrivals."""
    start = min(r.arrival for r in records)
    requests = sorted((r.arrival - start, r.prompt_tokens, r.output_tokens) for r in records)
    replayed = twin.replay(policy, requests, replicas, costs)
    return {"total_time": max(r.finish for r in replayed), "mean_e2e": statistics.fmean(r.e2e for r in replayed)}


def refit(records: list[RequestRecord], policy, replicas: int, fitted: twin.Costs, costs: twin.Costs,
          window_s: float) -> tuple[twin.Costs, list[float]]:
    """The controller's window-by-window refit: (the last costs, each window's prediction error)."""
    since, end, errors = min(r.arrival for r in records), max(r.finish for r in records), []
    while since < end:
        until = since + window_s
        live = [r for r in records if r.finish <= until]  # what the router had reported by then
        error = twin.prediction_error(policy, live, since, until, replicas, costs)
        if error is not None:
            errors.append(error)
        fitted, costs = twin.refit(fitted, policy, live, since, until, replicas)
        since = until
    return costs, errors


def measure(run_dir: Path, window_s: float = 30.0, max_batch: int = 256, dispatch: str = "round_robin",
            priority: str = "fcfs") -> dict:
    records, probe = read_run(run_dir)
    policy = baseline(dispatch, priority)
    replicas = max(r.replica for r in records) + 1
    fitted, costs = probe or (twin.Costs(max_batch=max_batch),) * 2
    last, errors = refit(records, policy, replicas, fitted, costs, window_s)
    observed = {"total_time": max(r.finish for r in records) - min(r.arrival for r in records),
                "mean_e2e": statistics.fmean(r.e2e for r in records)}
    out = {"run": str(run_dir), "requests": len(records), "replicas": replicas,
           "merged_streams": twin.merged(records), "observed": observed,
           "window_s": window_s, "windows_with_error": len(errors),
           "median_window_error": statistics.median(errors) if errors else None,
           "refit": {"costs": last.to_dict(), **whole_run(records, policy, replicas, last)}}
    if probe is not None:
        out["probe"] = {"costs": costs.to_dict(), **whole_run(records, policy, replicas, costs)}
    for arm in ("probe", "refit"):
        if arm in out:
            for key in ("total_time", "mean_e2e"):
                out[arm][key + "_error"] = out[arm][key] / observed[key] - 1
    return out


def _costs(c: dict) -> str:
    return (f"prefill {c['prefill_base_s'] * 1e3:.0f} ms + {c['prefill_per_token_s'] * 1e3:.2f} ms/token, decode "
            f"{c['decode_base_s'] * 1e3:.0f} ms + {c['decode_per_seq_s'] * 1e3:.1f} ms/seq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: the runs in tests/data/vllm_runs)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per window, as evolve's --window")
    parser.add_argument("--max-batch", type=int, default=256,
                        help="the servers' --max-num-seqs, for a run without calibration.json")
    parser.add_argument("--dispatch", default="round_robin", choices=list(DISPATCH_BASELINES),
                        help="the dispatch that served the runs")
    parser.add_argument("--priority", default="fcfs", choices=list(PRIORITY_BASELINES),
                        help="the queue order that served the runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not math.isfinite(args.window) or args.window <= 0:
        parser.error("--window must be positive")
    if args.max_batch < 1:
        parser.error("--max-batch must be at least 1")
    runs = args.runs or sorted(p for p in RECORDED.iterdir() if p.is_dir())
    try:
        results = [measure(run, args.window, args.max_batch, args.dispatch, args.priority) for run in runs]
    except (OSError, ValueError) as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        o = r["observed"]
        print(f"{r['run']}: {r['requests']} requests on {r['replicas']} servers, {r['merged_streams']} merged streams;"
              f" served in {o['total_time']:.1f} s, mean e2e {o['mean_e2e']:.2f} s")
        for arm in ("probe", "refit"):
            if arm in r:
                a = r[arm]
                print(f"  {arm:5s} replay: total {a['total_time']:6.1f} s ({a['total_time_error']:+.0%}), mean e2e "
                      f"{a['mean_e2e']:6.2f} s ({a['mean_e2e_error']:+.0%})  [{_costs(a['costs'])}]")
        median = r["median_window_error"]
        print(f"  {r['windows_with_error']} windows of {r['window_s']:.0f} s with a prediction error"
              + (f", median {median:.0%}" if median is not None else ""))


if __name__ == "__main__":
    main()
