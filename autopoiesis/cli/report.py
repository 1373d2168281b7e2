"""``autopoiesis report``: one run (offline: fitness, champion, lineage, LLM use; online: its
windows and deployments), or ``--list`` the runs of a folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.text import Text

from autopoiesis.archive import Archive
from autopoiesis.report import number, print_nothing_valid, print_results, report_data

from .common import UserError, new_console, open_archive


def cmd_report(args: argparse.Namespace) -> int:
    archive = open_archive(args.runs_dir, create=False)
    runs = archive.runs()
    if not runs:
        raise UserError(f"no runs in {args.runs_dir}")
    top = [r for r in runs if not r["parent"]] or runs  # not an online run's evolutions
    if args.list:
        return _list_runs(args, archive, top)
    run = archive.run(args.run or top[-1]["id"])
    if run["config"].get("mode") == "online":
        return _report_online(args, archive, run)
    if args.json:
        print(json.dumps(report_data(archive, run)))
        return 0
    from autopoiesis.online_view import print_source, titled_table

    console = new_console()
    cfg = run["config"]
    console.print(Text.assemble((f"run {run['id']}", "bold"), f"  adapter {run['adapter']}  status {run['status']}  "
                                f"strategy {cfg['strategy']}  seed {cfg['seed']}  objectives {', '.join(cfg.get('objective_list', []))}"))

    stats = archive.generation_stats(run["id"])
    table = titled_table("fitness over generations")
    for col in ("gen", "best", "median", "worst", "children", "valid", "failed", "rejected", "dupes"):
        table.add_column(col, justify="right")
    for s in stats:
        table.add_row(str(s["generation"]), number(s.get("best")), number(s.get("median")), number(s.get("worst")),
                      str(s["children"]), str(s["valid"]), str(s["failed"]), str(s["rejected"]), str(s["duplicates"]))
    console.print(table)
    if stats and not stats[-1]["valid"] and run["status"] != "running":
        return print_nothing_valid(console, archive, run, stats[-1]["generation"])

    print_results(console, archive, run["id"])
    if run["status"] != "done" and not cfg.get("parent"):  # killed or interrupted, or still going
        console.print(f"{_how_it_ended(run['status'])} `autopoiesis evolve --resume {run['id']} "
                      f"--runs-dir {args.runs_dir}` goes on where it stopped", highlight=False)

    data = report_data(archive, run)
    lineage = titled_table("lineage of the champion (newest first)")
    for col in ("generation", "program", "operator", "parents", cfg.get("objective_list", ["objective"])[0]):
        lineage.add_column(col)
    for step in data["lineage"]:
        lineage.add_row(str(step["generation"]), step["name"] or step["program"][:8], step["operator"],
                        ", ".join(p[:8] for p in step["parents"]), number(step["objective"]))
    console.print(lineage)

    llm = data["llm"]
    if llm:
        table = titled_table("LLM operators")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, label in (("calls", "calls"), ("failed_calls", "failed calls"), ("retried_errors", "errors retried"),
                           ("prompt_tokens", "prompt tokens"), ("completion_tokens", "completion tokens"),
                           ("usd", "cost (USD)"), ("latency_s", "LLM time (s)"), ("children", "LLM children"),
                           ("valid_child_rate", "valid-child rate"),
                           ("improvement_per_1k_tokens", "improvement per 1,000 tokens")):
            table.add_row(label, number(llm[key]) if isinstance(llm[key], float) else str(llm[key]))
        console.print(table)

    champion = data.get("champion")
    if champion:
        console.print("champion source", style="bold")
        print_source(console, champion["source"])
    return 0


def _list_runs(args: argparse.Namespace, archive: Archive, runs: list[dict[str, Any]]) -> int:
    """One line per run (an online run's evolutions are counted with it): what it was, how it
    ended, and the program it ended with, which ``--policy`` takes by run id."""
    from autopoiesis.online_view import titled_table

    rows = []
    evolutions: dict[str, int] = {}
    for r in archive.runs():
        if r["parent"]:
            evolutions[r["parent"]] = evolutions.get(r["parent"], 0) + 1
    for r in reversed(runs):
        run = archive.run(r["id"])
        cfg = run["config"]
        online = cfg.get("mode") == "online"
        if online:
            windows, deployments = archive.windows(run["id"]), archive.deployments(run["id"])
            program = windows[-1]["policy"] if windows else None
            kinds = [d["kind"] for d in deployments]
            what = (f"{len(windows)} windows, {evolutions.get(run['id'], 0)} evolutions, "
                    f"{kinds.count('deploy')} deployed, {kinds.count('rollback')} rolled back")
        else:
            champion = next((x for x in archive.results(run["id"]) if x["kind"] == "champion"), None)
            program = champion["program"] if champion else None
            stats = archive.generation_stats(run["id"])
            best = stats[-1].get("best") if stats else None
            what = f"{len(stats) - 1 if stats else 0} generations" + (f", best {number(best)}" if best is not None else "")
        rows.append({"run": run["id"], "adapter": run["adapter"], "mode": "online" if online else "offline",
                     "status": run["status"], "started": run["created"],
                     "objective": ", ".join(cfg.get("objective_list") or []), "progress": what, "program": program})
    if args.json:
        print(json.dumps(rows))
        return 0
    table = titled_table(f"runs in {args.runs_dir} (newest first; --policy RUN takes the program a run ended with)")
    for col in ("run", "adapter", "mode", "status", "started", "objective", "progress", "program"):
        table.add_column(col, no_wrap=col not in ("adapter", "objective", "progress"))  # ids stay whole, to copy
    for row in rows:
        table.add_row(row["run"], row["adapter"], row["mode"], row["status"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started"])), row["objective"],
                      row["progress"], (row["program"] or "-")[:8])
    new_console().print(table)
    return 0


def _report_online(args: argparse.Namespace, archive: Archive, run: dict[str, Any]) -> int:
    from autopoiesis.online_view import print_report

    run_id = run["id"]
    figure = Path(args.runs_dir) / run_id / "online.png"
    windows = archive.windows(run_id)
    last = archive.program(windows[-1]["policy"]) if windows else None  # what it served last
    if args.json:
        print(json.dumps({"run": run_id, "status": run["status"], "mode": "online",
                          "windows": windows, "deployments": archive.deployments(run_id),
                          "live": next((r["train"] for r in archive.results(run_id) if r["kind"] == "live"), None),
                          "last_policy": {"program": last.id, "name": last.name, "source": last.source} if last else None,
                          "plot": str(figure) if figure.exists() else None}))
        return 0
    console = new_console()
    console.print(Text.assemble((f"online run {run_id}", "bold"), f"  adapter {run['adapter']}  status {run['status']}"))
    print_report(console, archive, run_id, figure if figure.exists() else None, source=True)
    if run["status"] != "done":
        console.print(f"{_how_it_ended(run['status'])} its windows end here; "
                      f"{online_again(run, args.runs_dir)} starts a new run from what it served last", highlight=False)
    return 0


def _how_it_ended(status: str) -> str:
    """The start of a report's last line for a run that is not done. A killed run stays
    'running' (nothing records a death); an interrupted or failed one says so."""
    return {"interrupted": "interrupted:", "failed": "failed:",
            "budget spent": "its LLM budget ran out (raise --llm-max-calls, -tokens or -usd with --resume):"}.get(
        status, "not finished: if it is no longer running,")


def online_again(run: dict, runs_dir: str) -> str:
    """The command that starts a new online run from what ``run`` served last."""
    options = dict(run["config"].get("adapter_options", {}))
    scenario = f" --scenario {options.pop('scenario')}" if "scenario" in options else ""
    return (f"`autopoiesis evolve --online --adapter {run['adapter']}{scenario} --policy {run['id']} --runs-dir "
            f"{runs_dir}`" + (" and the options it ran with" if options else ""))
