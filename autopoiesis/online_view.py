"""How an online run looks to a person: the live view, the closing report, the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

MARKS = {"deploy": "green", "rollback": "red"}


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _hot_path(w: dict[str, Any]) -> str:
    """Fallbacks/calls, and the calls that stalled (the machine's fault, not the policy's) when any."""
    stalls = w.get("stalls", 0)
    return f"{w.get('fallbacks', 0)}/{w.get('calls', 0)}" + (f", {stalls} stalled" if stalls else "")


def print_source(console: Console, source: str) -> None:
    """A program's source, never cut: highlighted on a terminal (a line longer than the
    terminal wraps), plain text to a file or pipe, so what lands there runs as it stands."""
    source = source.strip() + "\n"
    if console.is_terminal:
        console.print(Syntax(source, "python", line_numbers=False, word_wrap=True))
    else:
        console.print(source, markup=False, highlight=False, soft_wrap=True, end="")


def titled_table(title: str) -> Table:
    """A table at least as wide as its title, so a narrow one does not break its title in two."""
    return Table(title=title, min_width=len(title))


def windows_table(windows: list[dict[str, Any]], title: str = "live windows", last: int | None = None) -> Table:
    table = titled_table(title)
    twin = any("twin_error" in w["metrics"] or "twin_late" in w["metrics"] for w in windows)  # a measured twin's
    for col in ("window", "time (s)", "arrivals/s", "finished", "in flight", "mean e2e (s)", "p99 TTFT (s)",
                "SLO", *(("twin error",) if twin else ()), "policy", "fallbacks", "trigger"):
        table.add_column(col, justify="left" if col in ("policy", "trigger", "time (s)") else "right")
    for w in windows[-last:] if last else windows:
        m = w["metrics"]
        error = f"{m['twin_error']:.0%}" if "twin_error" in m else "late" if m.get("twin_late") else "-"
        table.add_row(str(w["index"]), f"{w['start']:.0f}-{w['end']:.0f}", f"{m.get('rate', 0):.1f}",
                      f"{m.get('requests', 0):.0f}", f"{m.get('in_flight', 0):.0f}", _fmt(m.get("mean_e2e")),
                      _fmt(m.get("p99_ttft")), _fmt(m.get("slo_attainment")),
                      *((error,) if twin else ()), w["policy"][:8],
                      _hot_path(w), ", ".join(w.get("triggers", [])))
    return table


def deployments_table(deployments: list[dict[str, Any]]) -> Table:
    table = titled_table("deployments (evolutions, guard verdicts)")
    for col in ("time (s)", "what", "program", "twin: incumbent", "twin: champion", "took (s)", "why"):
        table.add_column(col, justify="right" if col.startswith(("time", "twin", "took")) else "left")
    for d in deployments:
        style = MARKS.get(d["kind"])
        table.add_row(f"{d['time']:.1f}", Text(d["kind"], style=style or ""), d["program"][:8],
                      _fmt(d.get("incumbent_fitness"), 5), _fmt(d.get("champion_fitness"), 5),
                      f"{d.get('evolution_s', 0):.1f}" if d.get("evolution_s") else "",
                      Text(d["reason"]))  # a reason can quote a program's error: not markup
    return table


class LiveView:
    """The rich live view: the latest windows and a status line, refreshed per window."""

    def __init__(self, console: Console, run_id: str):
        self.console, self.run_id = console, run_id
        self.windows: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.evolving = False

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "window":
            w = data["window"]
            self.windows.append({"index": w.index, "start": w.start, "end": w.end, "policy": w.policy,
                                 "metrics": w.metrics, "calls": w.calls, "fallbacks": w.fallbacks, "stalls": w.stalls,
                                 "triggers": w.triggers})
            self.evolving = data["job"]
            if not self.console.is_terminal:
                m = w.metrics
                self.console.print(f"window {w.index} {w.start:.0f}-{w.end:.0f} s: {m.get('rate', 0):.1f} req/s, "
                                   f"mean e2e {_fmt(m.get('mean_e2e'))} s, policy {w.policy[:8]}"
                                   + (f", trigger: {', '.join(w.triggers)}" if w.triggers else ""), highlight=False)
        elif kind == "deployment":
            d = data["deployment"]
            self.deployments.append(vars(d))
            if not self.console.is_terminal and d.kind != "initial":
                self.console.print(f"  {d.time:.1f} s {d.kind} {d.program[:8]}: {d.reason}", highlight=False,
                                   markup=False)
        elif kind == "trigger":
            self.evolving = True
        elif kind == "warning":
            self.console.print(f"warning: {data['message']}", highlight=False, markup=False)
        elif kind == "recall":
            self.console.print(f"recalled {data['programs']} winner(s) of {data['runs']} earlier online run(s) "
                               "as seeds", highlight=False)

    def __rich__(self) -> Group:
        live_time = self.windows[-1]["end"] if self.windows else 0.0
        kinds = [d["kind"] for d in self.deployments]
        status = Text.assemble(
            (f"{self.run_id}", "bold"), f"  live time {live_time:.0f} s  policy ",
            (self.windows[-1]["policy"][:8] if self.windows else "-", "cyan"),
            f"  deployments {kinds.count('deploy')}  rollbacks {kinds.count('rollback')}  ",
            ("evolving…" if self.evolving else "serving", "yellow" if self.evolving else "green"))
        return Group(windows_table(self.windows, last=12), status)


def print_report(console: Console, archive, run_id: str, plot_path: Path | None = None, source: bool = False) -> None:
    """The online run's windows, deployments and whole-run line; ``source``: and the program it served last."""
    windows, deployments = archive.windows(run_id), archive.deployments(run_id)
    console.print(windows_table(windows, title=f"{run_id}: live windows"))
    console.print(deployments_table(deployments))
    live = next((r["train"] for r in archive.results(run_id) if r["kind"] == "live"), None) or {}
    kinds = [d["kind"] for d in deployments]
    if live:
        console.print(f"whole run: total time {live.get('total_time', 0):.1f} s, mean e2e {live.get('mean_e2e', 0):.2f} s, "
                      f"p99 TTFT {live.get('p99_ttft', 0):.2f} s, SLO attainment {live.get('slo_attainment', 0):.3f}; "
                      f"{kinds.count('deploy')} deployment(s), {kinds.count('rollback')} rollback(s), "
                      f"{sum(w.get('fallbacks', 0) for w in windows)} hot-path fallback(s), "
                      f"{sum(w.get('stalls', 0) for w in windows)} stalled call(s)", highlight=False)
    errors = [w["metrics"]["twin_error"] for w in windows if "twin_error" in w["metrics"]]
    late = sum(1 for w in windows if w["metrics"].get("twin_late"))
    if errors or late:
        measured = (f"median {statistics.median(errors):.0%}, mean {sum(errors) / len(errors):.0%} over "
                    f"{len(errors)} window(s)") if errors else "none measured"
        console.print(f"twin prediction error (mean e2e, out of sample): {measured}"
                      + (f"; {late} window(s) without one: their replays came late (a busy machine)" if late else ""),
                      highlight=False)
    recalled = archive.run(run_id)["config"].get("recalled") or {}
    if recalled:
        console.print(f"seeded from {len(recalled)} winner(s) of {len(set(recalled.values()))} earlier online run(s) "
                      "(--recall)", highlight=False)
    if plot_path is not None:
        console.print(f"plot: {plot_path}")
    if source and windows:  # the program live at the end, readable, and how to serve it again
        last = archive.program(windows[-1]["policy"])
        console.print(Text.assemble((f"served last: {last.id[:8]}", "bold"), f" ({last.name})" if last.name else "",
                                    f"; serve it again with --policy {run_id}"))
        print_source(console, last.source)


def plot(windows: list[dict[str, Any]], deployments: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Latency and load over live time, with deployment (green) and rollback (red) markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = [(w["start"] + w["end"]) / 2 for w in windows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(mid, [w["metrics"].get("mean_e2e", float("nan")) for w in windows], label="mean e2e")
    top.plot(mid, [w["metrics"].get("p99_ttft", float("nan")) for w in windows], label="p99 TTFT")
    top.set_ylabel("latency (s)")
    top.set_yscale("symlog", linthresh=1.0)
    bottom.plot(mid, [w["metrics"].get("rate", 0.0) for w in windows], label="arrivals/s", color="tab:gray")
    bottom.plot(mid, [w["metrics"].get("requests", 0.0) / max(1e-9, w["end"] - w["start"]) for w in windows],
                label="finished/s", color="tab:blue")
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("live time (s)")
    for d in deployments:
        if d["kind"] in MARKS:
            for ax in (top, bottom):
                ax.axvline(d["time"], color=MARKS[d["kind"]], linestyle="--", linewidth=1)
    top.plot([], [], color="green", linestyle="--", label="deployment")
    top.plot([], [], color="red", linestyle="--", label="rollback")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    top.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
