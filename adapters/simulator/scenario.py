"""Scenarios: a cluster timeline, a model and a workload, in a TOML file a user can copy.

A scenario name is a file in ``scenarios/`` (shipped) or a path to a ``.toml`` file,
optionally with a load factor: ``mixed@1.5`` is ``mixed`` with every arrival rate 1.5 times
as high (the same pattern, bursts and shifts; the operator's planning estimate scales too).
The seed given at load time varies the workload draw (and the trace window), so
training and held-out snapshots are different samples of the same scenario.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopoiesis.metrics import SLO
from autopoiesis.traces import TraceError

from . import workload as workloads

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"


def trace_dirs() -> list[Path]:
    """Where trace files are looked for: $AUTOPOIESIS_TRACES, then shared/data/traces beside the checkout."""
    dirs = [Path(p) for p in os.environ.get("AUTOPOIESIS_TRACES", "").split(os.pathsep) if p]
    return dirs + [HERE.parents[1] / "shared" / "data" / "traces", HERE.parents[2] / "shared" / "data" / "traces"]


class ScenarioError(ValueError):
    """A scenario cannot be found or is malformed; the message is for the user."""


@dataclass
class Scenario:
    name: str
    description: str
    model: str
    requests: list[tuple[float, int, int]]
    initial_gpus: list[tuple[int, str]]
    cluster_events: list[tuple[float, str, tuple]]
    workload_estimate: tuple[float, float, float, float]
    slo: SLO = field(default_factory=SLO)
    token_budget: int = 2048
    max_seqs: int = 256
    max_context: int = 4096
    reschedule_interval: float = 30.0
    window_s: float = 60.0
    estimate_cost_s: float = 0.5
    calibration: str = "default"
    digest: str = ""
    gpu_tables: tuple[str, ...] = ()  # extra GPU TOML files (paths)
    model_tables: tuple[str, ...] = ()
    initial_plan: tuple | None = None  # twin replays: the live plan, already loaded at t=0
    replan_at_start: bool = False  # twin replays: the candidate plans differently, so it re-plans at t=0
    unanswered_events: tuple = ()  # twin replays: (kind, gpus) the live plan ignored; shown to the candidate at t=0
    initial_window: dict | None = None  # twin replays: what the live window showed (WindowView fields but workload)
    queued_on: tuple = ()  # twin replays: the live replica (gpus, tp, pp) request i was queued on, or None


def names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.toml"))


def split_load(name: str) -> tuple[str, float]:
    """``NAME@F`` -> (NAME, F); a name without ``@F`` has load factor 1."""
    base, at, factor = name.rpartition("@")
    if not at:
        return name, 1.0
    try:
        value = float(factor)
    except ValueError:
        if name.endswith(".toml"):  # a path with an @ in it
            return name, 1.0
        raise ScenarioError(f"scenario '{name}': the load factor after @ must be a number, got '{factor}'") from None
    if not 0 < value < float("inf"):
        raise ScenarioError(f"scenario '{name}': the load factor after @ must be a positive number, got '{factor}'")
    return base, value


def path_of(name: str) -> Path:
    name = split_load(name)[0]
    path = Path(name)
    if name.endswith(".toml"):
        if not path.is_file():
            raise ScenarioError(f"scenario file not found: {name}")
        return path
    path = SCENARIOS / f"{name}.toml"
    if not path.is_file():
        raise ScenarioError(f"unknown scenario '{name}' (shipped: {', '.join(names())}; or give a .toml path)")
    return path


def describe(name: str) -> str:
    """A scenario's description, without building its workload."""
    with open(path_of(name), "rb") as f:
        text = tomllib.load(f).get("description", "")
    factor = split_load(name)[1]
    return f"{text} Arrival rate x{factor:g}.".strip() if factor != 1.0 else text


def digest(name: str) -> str:
    """Content hash of a scenario file and its load factor (part of every snapshot key: edit the file,
    lose the cache)."""
    return _digest(path_of(name).read_bytes(), split_load(name)[1])


def _digest(text: bytes, factor: float) -> str:
    return hashlib.sha256(text + (f"@{factor!r}".encode() if factor != 1.0 else b"")).hexdigest()[:12]


def load(name: str, seed: int = 0, requests_limit: int | None = None) -> Scenario:
    path = path_of(name)
    text = path.read_bytes()
    try:
        spec = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    validate(spec, path)
    factor = split_load(name)[1]
    if factor != 1.0:
        spec["workload"]["rate"] = float(spec["workload"]["rate"]) * factor
        spec["name"] = f"{spec.get('name', path.stem)}@{factor:g}"
        spec["description"] = f"{spec.get('description', '')} Arrival rate x{factor:g}.".strip()
    return _build(spec, path, seed, requests_limit, _digest(text, factor))


# -- checking a scenario file ----------------------------------------------------------------
# Scenario files are written by hand. Every field is checked before anything is built, so a
# typo or a value out of range is one line naming the field: before, a negative rate was
# "unexpected error: ValueError: lam < 0" from numpy, an unknown field was silently ignored,
# and a cluster with no GPU at the start failed every policy with "empty plan".

def _number(low: float, *, above: bool = False, high: float | None = None, integer: bool = False):
    """A check: a number (an integer with ``integer``) >= low (> low with ``above``), <= high."""
    kind = "a whole number" if integer else "a number"
    bound = f"{'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"must be {kind} {bound}"
        ok = math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)
        return None if ok else f"must be {kind} {bound}"
    return check


def _text(value) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _texts(value) -> str | None:
    return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "must be a list of strings"


def _rows(shape: str, *columns):
    """A check: a list of rows like ``[[300, 0.6]]``, each column checked by its own check."""
    def check(value) -> str | None:
        if not isinstance(value, list):
            return f"must be a list of {shape}"
        for row in value:
            if not isinstance(row, list) or len(row) != len(columns):
                return f"must be a list of {shape}, got the row {row!r}"
            for name, column, item in zip(shape.strip("[]").split(", "), columns, row):
                if (error := column(item)) is not None:
                    return f"has {row!r}, whose {name} {error}"
        return None
    return check


_POSITIVE, _NON_NEGATIVE, _SHARE = _number(0, above=True), _number(0), _number(0, high=1)
PATTERNS = ("constant", "diurnal", "burst")
FIELDS = {
    "name": _text, "description": _text, "model": _text, "duration_s": _POSITIVE,
    "max_context": _number(2, integer=True), "reschedule_interval_s": _NON_NEGATIVE, "slo": None,
    "token_budget": _number(1, integer=True), "max_seqs": _number(1, integer=True), "window_s": _POSITIVE,
    "estimate_cost_s": _NON_NEGATIVE, "calibration": _text, "gpu_tables": _texts, "model_tables": _texts,
    "cluster": None, "workload": None,
}
SLO_FIELDS = {"ttft_s": _POSITIVE, "tpot_s": _POSITIVE}
GPU_FIELDS = {"type": _text, "count": _number(1, integer=True), "join_at": _NON_NEGATIVE,
              "leave_at": _NON_NEGATIVE, "notice_s": _NON_NEGATIVE}
WORKLOAD_FIELDS = {
    "rate": _POSITIVE, "trace": _text,
    "pattern": lambda v: None if v in PATTERNS else f"must be one of {', '.join(PATTERNS)}",
    "amplitude": _NON_NEGATIVE, "period_s": _POSITIVE,
    "bursts": _rows("[start, length, factor]", _NON_NEGATIVE, _POSITIVE, _NON_NEGATIVE),
    "long_share": _SHARE, "shifts": _rows("[at, share]", _NON_NEGATIVE, _SHARE),
}
PATTERN_FIELDS = {"amplitude": "diurnal", "period_s": "diurnal", "bursts": "burst"}  # used by that pattern only


def _fields(table: Any, schema: dict, where: str, required: tuple[str, ...]) -> list[str]:
    """What is wrong with one table of the file (``where``: "", "workload" or "[[cluster.gpus]] number 2")."""
    if not isinstance(table, dict):
        return [f"{where} must be a table"]

    def named(key: str) -> str:
        return key if not where else f"{where}.{key}" if where.isidentifier() else f"{key} of {where}"
    errors = []
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(schema)}"
            errors.append(f"unknown field '{named(key)}' ({hint})")
        elif schema[key] is not None and (error := schema[key](value)) is not None:
            errors.append(f"{named(key)} {error}, got {value!r}")
    errors += [f"missing field '{named(key)}'" for key in required if key not in table]
    return errors


def validate(spec: dict[str, Any], path: Path) -> None:
    """Raise ScenarioError naming every field of a scenario file that is unknown, missing or out of range."""
    errors = _fields(spec, FIELDS, "", ("model", "duration_s", "cluster", "workload"))
    if "slo" in spec:
        errors += _fields(spec["slo"], SLO_FIELDS, "slo", ())
    if "workload" in spec:
        errors += _workload(spec["workload"])
    if "cluster" in spec:
        errors += _cluster(spec["cluster"])
    if errors:
        raise ScenarioError(f"{path}: " + "; ".join(errors))


def _workload(wl: Any) -> list[str]:
    errors = _fields(wl, WORKLOAD_FIELDS, "workload", ("rate",))
    if not isinstance(wl, dict):
        return errors
    if "trace" in wl:
        errors += [f"workload.{key} does not apply to a trace, which gives the arrivals and their lengths"
                   for key in wl if key not in ("rate", "trace")]
    else:
        pattern = wl.get("pattern", "constant")
        errors += [f"workload.{key} applies to pattern = \"{used_by}\" only (this one is \"{pattern}\")"
                   for key, used_by in PATTERN_FIELDS.items() if key in wl and used_by != pattern]
    return errors


def _cluster(cluster: Any) -> list[str]:
    """The GPU groups, and a timeline that can serve: some GPU at 0 s, and some GPU left at the end."""
    if not isinstance(cluster, dict) or set(cluster) != {"gpus"}:
        return ["cluster must hold only its GPU groups, as [[cluster.gpus]] tables"]
    groups = cluster["gpus"]
    if not isinstance(groups, list) or not groups:
        return ["cluster.gpus must be one or more [[cluster.gpus]] tables"]
    errors = []
    for number, group in enumerate(groups, 1):
        where = f"[[cluster.gpus]] number {number}"
        found = _fields(group, GPU_FIELDS, where, ("type", "count"))
        errors += found
        if found:
            continue
        join, leave, notice = group.get("join_at", 0.0), group.get("leave_at"), group.get("notice_s")
        if leave is not None and leave <= join:
            errors.append(f"{where}: leave_at ({leave:g}) must come after join_at ({join:g})")
        if notice is not None and leave is None:
            errors.append(f"{where}: notice_s applies to a group with leave_at only")
        elif notice is not None and leave - notice < join:
            errors.append(f"{where}: notice_s ({notice:g}) would come before the GPUs are there")
    if errors:
        return errors
    if all("join_at" in group for group in groups):
        errors.append("no GPU is there at 0 s: give at least one [[cluster.gpus]] group no join_at")
    if all("leave_at" in group for group in groups):
        last = max(group["leave_at"] for group in groups)
        errors.append(f"every GPU has left by {last:g} s, so what is still queued could never be served: "
                      "give at least one [[cluster.gpus]] group no leave_at")
    return errors


def _build(spec: dict[str, Any], path: Path, seed: int, limit: int | None, digest: str) -> Scenario:
    duration = float(spec["duration_s"])
    max_context = int(spec.get("max_context", 4096))
    wl = spec["workload"]
    if wl.get("trace"):
        try:
            requests = workloads.from_trace(wl, _trace_path(wl["trace"], path), duration, seed, max_context)
        except TraceError as e:
            raise ScenarioError(str(e)) from None
    else:
        requests = workloads.generate(wl, duration, seed, max_context)
    if limit:
        requests = requests[:limit]

    initial, events, next_id = [], [], 0
    for group in spec["cluster"]["gpus"]:
        ids = list(range(next_id, next_id + int(group["count"])))
        next_id += len(ids)
        gtype = group["type"]
        if "join_at" in group:
            events.append((float(group["join_at"]), "join", tuple((i, gtype) for i in ids)))
        else:
            initial += [(i, gtype) for i in ids]
        if "leave_at" in group:
            leave = float(group["leave_at"])
            if "notice_s" in group:
                events.append((leave - float(group["notice_s"]), "notice", tuple(ids)))
            events.append((leave, "leave", tuple(ids)))
    events.sort(key=lambda e: e[0])

    # What the operator plans for: the declared rate; lengths from the trace's own statistics,
    # or the generator's expected mix at the start.
    prompts = sorted(p for _, p, _ in requests) or [1]
    if wl.get("trace"):
        mean_prompt = sum(prompts) / len(prompts)
        mean_output = sum(o for _, _, o in requests) / max(1, len(requests))
    else:
        mean_prompt, mean_output = _mix_mean(wl, 0), _mix_mean(wl, 2)
    estimate = (float(wl["rate"]), mean_prompt, mean_output, float(prompts[int(0.9 * (len(prompts) - 1))]))
    slo = spec.get("slo", {})
    return Scenario(
        name=spec.get("name", path.stem), description=spec.get("description", ""), model=spec["model"],
        requests=requests, initial_gpus=initial, cluster_events=events, workload_estimate=estimate,
        slo=SLO(float(slo.get("ttft_s", 2.0)), float(slo.get("tpot_s", 0.1))),
        token_budget=int(spec.get("token_budget", 2048)), max_seqs=int(spec.get("max_seqs", 256)),
        max_context=max_context, reschedule_interval=float(spec.get("reschedule_interval_s", 30.0)),
        window_s=float(spec.get("window_s", 60.0)), estimate_cost_s=float(spec.get("estimate_cost_s", 0.5)),
        calibration=_calibration(spec.get("calibration", "default"), path), digest=digest,
        gpu_tables=tuple(str(_relative(p, path)) for p in spec.get("gpu_tables", [])),
        model_tables=tuple(str(_relative(p, path)) for p in spec.get("model_tables", [])),
    )


def _relative(name: str, scenario_path: Path) -> Path:
    candidate = Path(name)
    if not candidate.is_absolute():
        candidate = scenario_path.parent / candidate
    if not candidate.is_file():
        raise ScenarioError(f"{scenario_path}: table file not found: {name}")
    return candidate


def _calibration(name: str, scenario_path: Path) -> str:
    """A shipped calibration's name, or a ``.toml`` path relative to the scenario file (as the tables)."""
    if name.endswith(".toml"):
        path = _relative(name, scenario_path)
        try:
            tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ScenarioError(f"{path}: {e}") from None
        return str(path)
    shipped = sorted(p.stem for p in (HERE / "data" / "calibration").glob("*.toml"))
    if name not in shipped:
        raise ScenarioError(f"{scenario_path}: unknown calibration '{name}' (shipped: {', '.join(shipped)}; "
                            "or give a .toml path, relative to the scenario file)")
    return name


def _mix_mean(wl: dict[str, Any], index: int) -> float:
    """Expected prompt (index 0) or output (index 2) length of the initial mix (what an operator plans for)."""
    import math

    share = float(wl.get("long_share", 0.1))
    means = {k: v[index] * math.exp(v[index + 1] ** 2 / 2) for k, v in workloads.CLASSES.items()}
    return (1 - share) * means["short"] + share * means["long"]


def _trace_path(name: str, scenario_path: Path) -> Path:
    candidates = [scenario_path.parent / name] + [d / name for d in trace_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ScenarioError(f"trace '{name}' not found (looked in {', '.join(str(c.parent) for c in candidates)}; "
                        "set AUTOPOIESIS_TRACES to its folder)")
