"""vLLM's /metrics, parsed with prometheus_client, into ``EngineSample``s.

Series names moved between vLLM versions (``gpu_cache_usage_perc`` became
``kv_cache_usage_perc``, ``time_per_output_token_seconds`` became
``inter_token_latency_seconds``, counters gained ``_total``): each quantity lists every
name it has had and the first one present wins; a missing one reads as 0. Counters and
histograms are cumulative, so a sample holds differences from the previous scrape:
tokens and preemptions in the interval, and the mean of each latency histogram over it
(``_sum`` and ``_count`` deltas). A server restart (counters going down) restarts the
differences.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from autopoiesis.metrics import EngineSample

GAUGES = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
COUNTERS = {
    "preemptions": ("vllm:num_preemptions", "vllm:num_preemptions_total"),
    "tokens": ("vllm:generation_tokens", "vllm:generation_tokens_total"),
}
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
}


def parse(text: str) -> dict[str, float]:
    """Every sample summed over its label sets (engines, models), keyed by sample name."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def _first(values: dict[str, float], names: tuple[str, ...], suffix: str = "") -> float | None:
    for name in names:
        for candidate in (name + suffix, name + "_total" + suffix if not suffix else ""):
            if candidate and candidate in values:
                return values[candidate]
    return None


class Scraper:
    """Turns successive /metrics texts of each server into interval samples."""

    def __init__(self):
        self.previous: dict[int, dict[str, float]] = {}

    def sample(self, replica: int, time: float, text: str) -> EngineSample:
        values = parse(text)
        now = {key: _first(values, names) or 0.0 for key, names in COUNTERS.items()}
        for key, names in HISTOGRAMS.items():
            now[key + "_sum"] = _first(values, names, "_sum") or 0.0
            now[key + "_count"] = _first(values, names, "_count") or 0.0
        before = self.previous.get(replica)
        if before is None or any(now[k] < before[k] for k in now):  # first scrape or a restart
            before = dict.fromkeys(now, 0.0) if before is not None else now
        self.previous[replica] = now
        latency = {}
        for key in HISTOGRAMS:
            count = now[key + "_count"] - before[key + "_count"]
            if count > 0:
                latency[key] = (now[key + "_sum"] - before[key + "_sum"]) / count
        gauges = {key: _first(values, names) or 0.0 for key, names in GAUGES.items()}
        return EngineSample(time, replica, gauges["running"], gauges["waiting"], gauges["kv_usage"],
                            now["preemptions"] - before["preemptions"], now["tokens"] - before["tokens"], latency)
