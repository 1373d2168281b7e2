"""What an offline run found, read back from the archive.

The tables that ``autopoiesis report`` and the end of ``autopoiesis evolve`` print (the
champion against the baselines, what it gives up, the Pareto front of a run with several
objectives, the LLM operators' bill) and the data behind ``report --json``. Nothing here
writes: a report can be asked of a run that is still going.
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.text import Text

from .archive import Archive


def print_nothing_valid(console: Console, archive: Archive, run: dict[str, Any], generation: int) -> int:
    """A run that ended with no valid program (``no seed program is valid``): what each of that
    generation's programs failed on, which is all there is to see, and that resuming cannot help."""
    from autopoiesis.online_view import titled_table

    table = titled_table(f"why generation {generation} has no valid program")
    for col in ("program", "made by", "error"):
        table.add_column(col)
    for birth in archive.births(run["id"]):
        if birth["generation"] == generation and birth["error"]:
            table.add_row(birth["program"][:8], birth["name"] or birth["operator"], Text(birth["error"]))
    console.print(table)
    console.print(f"{run['status']}: generation {generation} left no valid program, so there is nothing to go on "
                  "from; fix what the errors say (or raise the limit they name) and start a new run", highlight=False)
    return 0


def report_data(archive: Archive, run: dict[str, Any]) -> dict[str, Any]:
    cfg = run["config"]
    objective = (cfg.get("objective_list") or ["min:?"])[0].partition(":")[2]
    results = archive.results(run["id"])
    champion = next((r for r in results if r["kind"] == "champion"), None)
    if champion is None:  # unfinished run: its latest generation's best
        stats = archive.generation_stats(run["id"])
        pid = stats[-1].get("champion") if stats else None
        champion = {"program": pid} if pid else None
    births = {b["program"]: b for b in archive.births(run["id"])}
    lineage, frontier, seen = [], [champion["program"]] if champion else [], set()
    while frontier and len(lineage) < 50:
        pid = frontier.pop(0)
        if pid in seen or pid not in births:
            continue
        seen.add(pid)
        b = births[pid]
        lineage.append({**b, "objective": _train_objective(archive, pid, cfg.get("train_keys", []), objective)})
        frontier.extend(b["parents"])
    out = {"run": run, "generations": archive.generation_stats(run["id"]), "results": results, "lineage": lineage,
           "llm": _llm_summary(archive, run, objective)}
    if champion:
        out["champion"] = {"program": champion["program"], "source": archive.program(champion["program"]).source}
    front = pareto_front(archive, run)
    if front:
        out["front"] = front
    return out


def _llm_summary(archive: Archive, run: dict[str, Any], objective: str) -> dict[str, Any] | None:
    from autopoiesis.archive import llm_calls

    calls = llm_calls(archive, run["id"])
    if not calls:
        return None
    births = archive.births(run["id"])
    children = [b for b in births if b["operator"].startswith("llm.")]
    valid = [b for b in children if b["status"] == "valid"]
    tokens = sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
    keys = run["config"].get("train_keys", [])
    direction = (run["config"].get("objective_list") or ["min:"])[0].partition(":")[0]
    seeds = [v for b in births if b["operator"] == "seed"
             if (v := _train_objective(archive, b["program"], keys, objective)) is not None]
    results = {r["kind"]: r for r in archive.results(run["id"])}
    champion = (results.get("champion") or {}).get("train") or {}
    improvement = None
    if seeds and objective in champion and tokens:
        best_seed = min(seeds) if direction == "min" else max(seeds)
        gain = (best_seed - champion[objective]) / abs(best_seed) if best_seed else 0.0
        improvement = (gain if direction == "min" else -gain) / (tokens / 1000)
    return {
        "calls": len(calls), "failed_calls": sum(1 for c in calls if c["response"] is None),
        "retried_errors": sum(1 for c in calls if c["error"] and c["response"] is not None),
        "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
        "completion_tokens": sum(c["completion_tokens"] for c in calls),
        "usd": float(sum(c["usd"] for c in calls)), "latency_s": float(sum(c["latency_s"] for c in calls)),
        "children": len(children), "valid_child_rate": (len(valid) / len(children)) if children else 0.0,
        "improvement_per_1k_tokens": improvement,
    }


def _train_objective(archive: Archive, pid: str, keys: list[str], objective: str) -> float | None:
    values = []
    for key in keys:
        outcome = archive.get((pid, key))
        if outcome is None or not outcome.ok or objective not in outcome.metrics:
            return None
        values.append(outcome.metrics[objective])
    return sum(values) / len(values) if values else None


def print_results(console: Console, archive: Archive, run_id: str, training: bool = True) -> None:
    from autopoiesis.online_view import titled_table

    results = archive.results(run_id)
    if not results:
        console.print("no final results yet (the run has not finished)")
        return
    headline = archive.run(run_id)["config"].get("headline")
    available = {k for r in results for k in (r["held_out"] or r["train"] or {})}
    metrics = [m for m in headline if m in available] if headline else sorted(available)
    title = "held-out snapshots; training in brackets" if training else "held-out snapshots"
    table = titled_table(f"champion and baselines ({title})")
    table.add_column("policy")
    table.add_column("program")
    for m in metrics:
        table.add_column(m, justify="right")
    for r in results:
        cells = []
        for m in metrics:
            held = (r["held_out"] or {}).get(m)
            train = (r["train"] or {}).get(m)
            if held is None:
                cells.append(Text(f"({number(train)})", style="dim"))
            else:
                cells.append(Text.assemble(f"{number(held)} ", (f"({number(train)})", "dim")) if training else number(held))
        style = "bold green" if r["kind"] == "champion" else None
        table.add_row(r["name"], r["program"][:8], *cells, style=style)
    console.print(table)
    run = archive.run(run_id)
    objectives = run["config"].get("objective_list") or [""]
    note = trade_offs(results, objectives[0], run["config"].get("directions", {}), metrics, several=len(objectives) > 1)
    if note:
        console.print(note, style="yellow", highlight=False)
    front = pareto_front(archive, run)
    if front:
        champion = next((r["program"] for r in results if r["kind"] == "champion"), None)
        names = [o.partition(":")[2] for o in objectives]
        table = titled_table("Pareto front of the last generation (training snapshots): no program here is "
                            "better on every objective than another")
        table.add_column("program")
        for o in objectives:
            table.add_column(o, justify="right")
        labels = {r["program"]: r["name"] for r in results if r["kind"] == "baseline"}
        labels[champion] = "champion"
        points: dict[tuple, list[str]] = {}  # programs that score alike (often rewrites of one rule): one row
        for entry in front:
            points.setdefault(tuple(entry["values"][n] for n in names), []).append(entry["program"])
        for values, programs in points.items():
            programs.sort(key=lambda pid: (pid not in labels, pid != champion))  # the champion, a baseline first
            shown = programs[0][:8] + (f" ({labels[programs[0]]})" if programs[0] in labels else "")
            table.add_row(shown + (f" and {len(programs) - 1} more alike" if len(programs) > 1 else ""),
                          *(number(v) for v in values), style="bold green" if champion in programs else None)
        console.print(table)


def pareto_front(archive: Archive, run: dict[str, Any]) -> list[dict[str, Any]]:
    """For a run with several objectives: the last generation's programs that no other in it
    beats on every objective (DEAP's non-dominated sort, on the training snapshots), best on
    the first objective first (the champion). One champion cannot show the trade-offs such a run found."""
    from deap import tools

    from autopoiesis.metrics import Objective
    from autopoiesis.search import fitness_class

    cfg = run["config"]
    objectives = [Objective.parse(o) for o in cfg.get("objective_list") or []]
    last = archive.last_generation(run["id"])
    if len(objectives) < 2 or last is None:
        return []
    scored = []
    for pid in dict.fromkeys(pid for island in archive.population(run["id"], last) for pid in island):
        values = [_train_objective(archive, pid, cfg.get("train_keys", []), o.name) for o in objectives]
        if None not in values:
            scored.append(types.SimpleNamespace(program=pid, fitness=fitness_class(objectives)(values)))
    front = tools.sortNondominated(scored, len(scored), first_front_only=True)[0] if scored else []
    front.sort(key=lambda e: (tuple(-w for w in e.fitness.wvalues), e.program))  # as Strategy.best ranks
    return [{"program": e.program, "values": dict(zip((o.name for o in objectives), e.fitness.values))}
            for e in front]


def trade_offs(results: list[dict[str, Any]], objective: str, directions: Mapping[str, str],
               metrics: Sequence[str], worse_by: float = 0.25, several: bool = False) -> str:
    """What the champion gives up against the best baseline on ``objective`` (held out): the
    table's metrics it is more than ``worse_by`` worse on. Evolution optimizes one objective
    and says nothing of the rest; a user reading only that line would miss them. With
    ``several`` objectives the champion is the front's best on the first, and the line says so."""
    direction, _, name = objective.rpartition(":")
    held = {r["name"]: r["held_out"] or {} for r in results if r["kind"] in ("champion", "baseline")}
    champion = next((held[r["name"]] for r in results if r["kind"] == "champion"), {})
    baselines = {n: m for n, m in held.items() if n != "champion" and name in m}
    if name not in champion or not baselines:
        return ""
    sign = -1.0 if direction == "max" else 1.0
    best = min(baselines, key=lambda n: sign * baselines[n][name])
    worse = []
    for m in metrics:
        a, b, way = champion.get(m), baselines[best].get(m), directions.get(m)
        if m == name or a is None or b is None or way not in ("min", "max") or b == 0:
            continue
        change = (a - b) / abs(b) * (1.0 if way == "min" else -1.0)
        if change > worse_by:
            worse.append(f"{m} {number(a)} against {number(b)} ({'+' if way == 'min' else '-'}{abs(a - b) / abs(b):.0%})")
    if not worse:
        return ""
    gain = sign * (baselines[best][name] - champion[name]) / abs(baselines[best][name] or 1.0)
    advice = (f"The champion is the best on {name} of the programs no other beats on every objective; the "
              f"Pareto front below shows the others." if several else
              f"Evolution ranks by --objective ({objective}); give another, or several with "
              f"--strategy nsga2, to weigh what it gives up.")
    return (f"Against {best}, the best baseline on {name}, the champion is {abs(gain):.1%} "
            f"{'better' if gain >= 0 else 'worse'} on {name} and worse on {'; '.join(worse)}. {advice}")


def number(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"
