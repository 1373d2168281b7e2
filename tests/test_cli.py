"""The CLI as a user runs it: real processes, real SQLite, real signals."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from autopoiesis.archive import Archive
from conftest import EXAMPLE, ROOT
from processes import ended

CLI = [sys.executable, "-m", "autopoiesis.cli"]


def cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_evolve_json_summary_and_report(tmp_path):
    runs = str(tmp_path / "runs")
    proc = cli("evolve", "--adapter", str(EXAMPLE), "--generations", "3", "--population", "8",
               "--runs-dir", runs, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["objective"] == "min:mean_completion_time"
    assert summary["generations"] == 3
    assert summary["held_out"]["champion"]["mean_completion_time"] <= summary["held_out"]["fcfs"]["mean_completion_time"]

    report = cli("report", summary["run"], "--runs-dir", runs)
    assert report.returncode == 0, report.stderr
    for section in ("fitness over generations", "champion and baselines", "lineage of the champion",
                    "champion source", "def priority", "fcfs"):
        assert section in report.stdout

    data = json.loads(cli("report", "--runs-dir", runs, "--json").stdout)
    assert data["champion"]["program"] == summary["champion"]
    assert data["lineage"][-1]["operator"] == "seed"


def test_paths_with_brackets_print_as_they_are(tmp_path):
    """An adapter file and a runs folder under '[work]' and '[old]': what the CLI prints names them
    whole (before, rich read '[work]' as a style tag and dropped it from the path it printed)."""
    adapter = tmp_path / "[work]" / "single_queue.py"
    adapter.parent.mkdir()
    adapter.write_text(EXAMPLE.read_text())
    runs = str(tmp_path / "[old]" / "runs")
    proc = cli("evolve", "--adapter", str(adapter), "--generations", "1", "--population", "4", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr
    printed = " ".join(proc.stdout.split())  # a long line wraps at its spaces
    run_id = printed.split("Details: autopoiesis report ", 1)[1].split()[0]
    assert f"Details: autopoiesis report {run_id} --runs-dir {runs}" in printed
    report = cli("report", run_id, "--runs-dir", runs)
    assert report.returncode == 0, report.stderr
    assert f"run {run_id} adapter {adapter} status done" in " ".join(report.stdout.split())


def test_report_prints_the_champion_whole_however_long_its_lines(tmp_path):
    """Piped or in a file, ``report`` gives the source as it is: a line wider than the console
    is neither cut nor wrapped, and no line is padded, so the text runs as it stands."""
    long_line = "NOTE = " + repr("a module-level line wider than any console " * 8)
    adapter, runs = tmp_path / "wide.py", str(tmp_path / "runs")
    adapter.write_text(EXAMPLE.read_text().replace("FCFS = '''\n", "FCFS = '''\n" + long_line + "\n", 1))
    proc = cli("evolve", "--adapter", f"{adapter}:SingleQueueAdapter", "--generations", "0", "--population", "2",
               "--runs-dir", runs, "--json")
    assert proc.returncode == 0, proc.stderr
    report = cli("report", "--runs-dir", runs)
    source = report.stdout.split("champion source\n", 1)[1]
    champion = json.loads(cli("report", "--runs-dir", runs, "--json").stdout)["champion"]["source"]
    assert long_line in champion and source == champion.strip() + "\n"


@pytest.mark.parametrize("args, fragment", [
    (["evolve"], "needs --adapter"),
    (["evolve", "--adapter", "no-such-adapter"], "unknown adapter 'no-such-adapter'"),
    (["evolve", "--adapter", "missing.py"], "adapter file not found"),
    (["evolve", "--adapter", "json:dumps"], "is not an Adapter subclass"),
    (["evolve", "--adapter", str(EXAMPLE), "--population", "many"], "expected an integer"),
    (["evolve", "--adapter", str(EXAMPLE), "--population", "0"], "must be at least 1"),
    (["evolve", "--adapter", str(EXAMPLE), "--option", "nokey"], "KEY=VALUE"),
    (["evolve", "--adapter", str(EXAMPLE), "--option", "colour=3"], "takes no option 'colour' (its options: jobs, load)"),
    (["evolve", "--adapter", str(EXAMPLE), "--option", "jobs=many"], "cannot create adapter"),
    (["bench", "--adapter", "simulator", "--trace", "t.csv"], "takes no option 'trace' (its options: scenario, requests)"),
    (["evolve", "--adapter", str(EXAMPLE), "--objective", "up:speed"], "direction"),
    (["evolve", "--adapter", str(EXAMPLE), "--objective", "speed", "--generations", "0"], "no metric speed"),
    (["evolve", "--resume", "nope"], "no archive"),
    (["report", "nope"], "no archive"),
    (["bogus"], "invalid choice"),
    (["evolve", "--adapter", "vllm", "--vllm-url", "http://127.0.0.1:1", "--scenario", "steady", "--rate", "2",
      "--load-factor", "0.5"], "not allowed with argument --rate"),
    (["evolve", "--adapter", "vllm", "--vllm-url", "http://127.0.0.1:1", "--load-factor", "0.5"],
     "--load-factor sizes the adapter's own load"),
    (["evolve", "--adapter", "vllm", "--vllm-url", "http://127.0.0.1:1", "--load-factor", "-1"], "must be positive"),
    (["evolve", "--adapter", "engine", "--online", "-o", "device=tpu"], "device 'tpu': Expected one of cpu"),
    (["evolve", "--adapter", "vllm", "--vllm-url", "127.0.0.1:8000"], "--vllm-url must be an http:// or https:// URL"),
    # numpy's "unexpected error: ValueError: expected non-negative integer" before
    (["evolve", "--adapter", "simulator", "--seed", "-5"], "argument --seed: must not be negative, got -5"),
    (["evolve", "--adapter", "simulator", "--online", "--live-seed", "-5"], "argument --live-seed: must not be negative"),
    (["simulate", "--seed", "-1"], "argument --seed: must not be negative, got -1"),
    # without a scheme every LLM call failed, reported at the end of the run
    (["evolve", "--adapter", str(EXAMPLE), "--llm-url", "127.0.0.1:8000/v1", "--llm-model", "m"],
     "--llm-url must be an http:// or https:// URL such as http://127.0.0.1:8000/v1, got '127.0.0.1:8000/v1'"),
])
def test_user_mistakes_get_one_line(tmp_path, args, fragment):
    proc = cli(*args, "--runs-dir", str(tmp_path)) if args[0] in ("evolve", "report") else cli(*args)
    assert_one_line_error(proc, fragment)


def test_a_runs_dir_that_is_a_file_is_one_line(tmp_path):
    """Before: "unexpected error: FileExistsError: [Errno 17] File exists"."""
    (tmp_path / "runs").write_text("")
    for runs in ("runs", "runs/more"):
        proc = cli("evolve", "--adapter", str(EXAMPLE), "--runs-dir", str(tmp_path / runs))
        assert_one_line_error(proc, f"cannot make the folder for {tmp_path / runs / 'archive.db'}: "
                                    f"{tmp_path / 'runs'} is a file, not a folder")


BROKEN_ADAPTER = """from autopoiesis import Adapter, PolicySlot, Snapshot

SLOT = PolicySlot(name="p", params=("x",), doc="d", baselines={"b": "def p(x):\\n    return x\\n"}, examples=[(1.0,)])


class A(Adapter):
    name = "a"

    def __init__(self):
        INIT

    def slots(self):
        return SLOTS

    def snapshot(self, seed):
        return SNAPSHOT

    def evaluate(self, policy, snapshot):
        return {"m": policy.p(1.0)}
"""


@pytest.mark.parametrize("init, slots, snapshot, says", [
    ("raise KeyError('k')", "[SLOT]", "Snapshot('a', {})", "cannot create adapter '{path}': KeyError: 'k'"),
    ("pass", "5", "Snapshot('a', {})", "adapter a: slots() failed: TypeError: 'int' object is not iterable"),
    ("pass", "[]", "Snapshot('a', {})", "adapter a: slots() must return PolicySlot objects, got nothing"),
    ("pass", "['p']", "Snapshot('a', {})", "adapter a: slots() must return PolicySlot objects, got 'p'"),
    ("pass", "[SLOT, SLOT]", "Snapshot('a', {})", "adapter a: two slots are named 'p'"),
    ("pass", "[SLOT]", "None", "adapter a: snapshot(0) returned None, not a Snapshot"),
])
def test_an_adapter_that_breaks_its_contract_is_named_in_one_line(tmp_path, init, slots, snapshot, says):
    """Before: "unexpected error: KeyError", "TypeError: 'int' object is not iterable" and
    "AttributeError: 'NoneType' object has no attribute 'key'", far from the mistake."""
    path = tmp_path / "adapter.py"
    path.write_text(BROKEN_ADAPTER.replace("INIT", init).replace("SLOTS", slots).replace("SNAPSHOT", snapshot))
    proc = cli("evolve", "--adapter", str(path), "--objective", "m", "--generations", "1", "--population", "2",
               "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(proc, says.format(path=path))


def test_a_mistake_in_a_users_adapter_is_named_and_a_fix_is_scored_afresh(tmp_path):
    """An adapter under development: its snapshot's failure is one line naming the call, and
    once its author fixes ``evaluate`` the next run in the same archive scores with the fix
    instead of reusing the broken runs' results (a failure, or a wrong metric)."""
    source = EXAMPLE.read_text()
    adapter, runs = tmp_path / "mine.py", str(tmp_path / "runs")
    args = ("evolve", "--adapter", f"{adapter}:SingleQueueAdapter", "--generations", "0", "--population", "4",
            "--runs-dir", runs)
    adapter.write_text(source.replace("    def snapshot(self, seed", "    def snapshot(self, seed, *_):\n"
                                      "        raise ValueError('no workload yet')\n\n    def unused(self, seed", 1))
    assert_one_line_error(cli(*args), "adapter single_queue: snapshot(0) failed: ValueError: no workload yet")
    evaluate = "    def evaluate(self, policy, snapshot):\n"
    broken = {"raises": evaluate + "        raise RuntimeError('my bug')\n\n    def unused(self, policy, snapshot):\n",
              "misnames": evaluate + "        return {'mct': 1.0}\n\n    def unused(self, policy, snapshot):\n"}
    for bug, fragment in (("raises", "RuntimeError: my bug"),
                          ("misnames", "the adapter reported no metric mean_completion_time (it has: mct)")):
        adapter.write_text(source.replace(evaluate, broken[bug], 1))
        assert_one_line_error(cli(*args), f"no seed program is valid ({fragment})")
    adapter.write_text(source)
    fixed = cli(*args, "--json")
    assert fixed.returncode == 0, fixed.stderr
    fresh = json.loads(cli(*args[:-1], str(tmp_path / "fresh"), "--json").stdout)  # an archive of its own
    assert {k: json.loads(fixed.stdout)[k] for k in ("evaluations", "reused", "fitness")} == \
        {k: fresh[k] for k in ("evaluations", "reused", "fitness")}


def test_an_adapter_file_imports_its_own_modules_and_an_edit_to_one_is_scored_afresh(tmp_path):
    """An adapter file that imports a module beside it loads as ``python adapter.py`` would,
    from any folder, and the module is part of the adapter's code: a fix there is scored
    afresh in the same archive, not answered from the evaluations made before it."""
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    source = EXAMPLE.read_text()
    start, end = source.index("def mean_completion_time"), source.index("class SingleQueueAdapter")
    (project / "model" / "__init__.py").write_text("")
    (project / "model" / "queue.py").write_text("from __future__ import annotations\n\nimport math\n\nSCALE = 1.0\n\n\n" + source[start:end].replace(
        "return math.fsum(flow) / len(flow), max(flow)", "return SCALE * math.fsum(flow) / len(flow), max(flow)"))
    (project / "adapter.py").write_text(source[:start] + "from model.queue import mean_completion_time\n\n\n"
                                        + source[end:])
    args = ("evolve", "--adapter", str(project / "adapter.py"), "--generations", "0", "--population", "4",
            "--runs-dir", str(tmp_path / "runs"), "--json")
    first = cli(*args, cwd=tmp_path)  # not the adapter's folder
    assert first.returncode == 0, first.stderr
    again = json.loads(cli(*args, cwd=tmp_path).stdout)
    assert again["evaluations"] == 0 and again["reused"] > 0  # nothing changed: all reused
    (project / "model" / "queue.py").write_text((project / "model" / "queue.py").read_text()
                                                .replace("SCALE = 1.0", "SCALE = 2.0"))
    edited = json.loads(cli(*args, cwd=tmp_path).stdout)
    first = json.loads(first.stdout)
    assert (edited["evaluations"], edited["reused"]) == (first["evaluations"], first["reused"])  # run afresh
    assert edited["fitness"]["mean_completion_time"] == pytest.approx(2 * first["fitness"]["mean_completion_time"])


@pytest.mark.parametrize("defined, missing", [
    ("", "slots()"),
    ("slots", "snapshot(seed)"),
    ("slots snapshot", "evaluate(policy, snapshot)"),
])
def test_an_adapter_missing_a_method_evolution_needs_is_told_which(tmp_path, defined, missing):
    methods = {
        "slots": "    def slots(self):\n        return [PolicySlot(name='priority', params=('job', 'now'), doc='',\n"
                 "                           baselines={'fcfs': 'def priority(job, now):\\n    return 0.0\\n'})]\n",
        "snapshot": "    def snapshot(self, seed):\n        return Snapshot(self.name, {'seed': seed})\n",
    }
    adapter = tmp_path / "half.py"
    adapter.write_text("from autopoiesis import Adapter, PolicySlot, Snapshot\n\n\nclass Half(Adapter):\n"
                       "    name = 'half'\n" + "".join(methods[m] for m in defined.split()))
    proc = cli("evolve", "--adapter", str(adapter), "--objective", "x", "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(proc, f"adapter 'half' (Half) does not implement {missing}; evolution needs slots(), "
                                "snapshot(seed) and evaluate(policy, snapshot)")


@pytest.mark.parametrize("removed", ["window_snapshot", "observe"])
def test_a_live_adapter_missing_a_live_method_is_told_which_before_it_serves(tmp_path, removed):
    """A live adapter without ``window_snapshot`` served windows until its first evolution and
    then failed, saying it had "no live system (offline only)". Now the run is refused before
    the live system starts, naming the method; ``bench`` needs no snapshot of a window."""
    for name in ("live_queue.py", "single_queue.py"):
        source = (ROOT / "examples" / name).read_text()
        (tmp_path / name).write_text(source.replace(f"    def {removed}(", f"    def renamed_{removed}("))
    runs = str(tmp_path / "runs")
    proc = cli("evolve", "--adapter", str(tmp_path / "live_queue.py"), "--online", "--runs-dir", runs)
    signature = {"window_snapshot": "window_snapshot(since, until, incumbent)", "observe": "observe(until)"}[removed]
    assert_one_line_error(proc, f"adapter 'live_queue' (LiveQueueAdapter) does not implement {signature}; a live "
                                "run needs start(seed), now(), observe(until)")
    assert "window 0" not in proc.stderr
    bench = cli("bench", "--adapter", str(tmp_path / "live_queue.py"), "--runs-dir", runs, "--json")
    if removed == "window_snapshot":
        assert bench.returncode == 0 and json.loads(bench.stdout.splitlines()[-1])["requests"] > 1000
    else:
        assert_one_line_error(bench, f"does not implement {signature}")
    assert_one_line_error(cli("evolve", "--adapter", str(EXAMPLE), "--online", "--runs-dir", runs),
                          "adapter 'single_queue' has no live system (offline only)")


def test_a_live_adapter_that_fails_mid_run_is_named_and_its_windows_are_kept(tmp_path):
    """A bug in a user's live system (``observe`` raising after 100 s) was "unexpected error:
    ValueError"; now the message names the adapter's call, and the command that shows the
    windows served before it, which the archive keeps (the run marked failed)."""
    source = (ROOT / "examples" / "live_queue.py").read_text()
    (tmp_path / "single_queue.py").write_text(EXAMPLE.read_text())
    adapter, runs = tmp_path / "live_queue.py", str(tmp_path / "runs")
    observe = "    def observe(self, until: float) -> Observation:\n"
    adapter.write_text(source.replace(observe, observe + "        if until > 100:\n            raise ValueError('my bug')\n"))
    proc = cli("evolve", "--adapter", str(adapter), "--online", "--runs-dir", runs, "--json")
    *served, error = proc.stderr.strip().splitlines()  # the log of the windows served, then one line
    assert proc.returncode == 2 and len(served) == 3 and "Traceback" not in proc.stderr
    assert error.startswith("autopoiesis: error: adapter live_queue: observe(105.0) failed: ValueError: my bug")
    assert "the 3 window(s) served before it are in the archive: autopoiesis report live_queue-online-" in error
    run = error.split("autopoiesis report ")[1].split()[0]
    report = json.loads(cli("report", run, "--runs-dir", runs, "--json").stdout)
    assert report["status"] == "failed" and len(report["windows"]) == 3
    start = "    def start(self, seed: int = 1000) -> None:\n"
    adapter.write_text(source.replace(start, start + "        raise OSError('no queue here')\n"))
    proc = cli("evolve", "--adapter", str(adapter), "--online", "--runs-dir", runs)
    assert_one_line_error(proc, "adapter live_queue: start(seed=1000) failed: OSError: no queue here")
    assert "window(s) served" not in proc.stderr


def test_a_live_system_that_fails_at_the_end_is_stopped_and_its_run_marked_failed(tmp_path):
    """A failing ``live_metrics()`` at the end of a run left the live system running (``stop()``
    never called) and the run "running" in the archive for ever; a failing ``stop()`` is said
    when it is the only failure, and never hides the failure before it."""
    source = (ROOT / "examples" / "live_queue.py").read_text()
    (tmp_path / "single_queue.py").write_text(EXAMPLE.read_text())
    adapter, runs, stopped = tmp_path / "live_queue.py", str(tmp_path / "runs"), tmp_path / "stopped"
    stop = "    def stop(self) -> None:\n"
    records_stop = stop + f"        open({str(stopped)!r}, 'a').write('stopped ')\n"
    metrics_bug = "    def live_metrics(self):\n        raise ValueError('metrics bug')\n\n"
    observe = "    def observe(self, until: float) -> Observation:\n"

    def run(text):
        adapter.write_text(text)
        proc = cli("evolve", "--adapter", str(adapter), "--online", "--runs-dir", runs)
        error = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        run_id = error.split("autopoiesis report ")[1].split()[0] if "autopoiesis report " in error else None
        return error, run_id

    error, run_id = run(source.replace(stop, metrics_bug + records_stop))
    assert error.startswith("autopoiesis: error: adapter live_queue: live_metrics() failed: ValueError: metrics bug")
    assert stopped.read_text() == "stopped "
    assert json.loads(cli("report", run_id, "--runs-dir", runs, "--json").stdout)["status"] == "failed"
    report = " ".join(cli("report", run_id, "--runs-dir", runs).stdout.split())
    assert f"failed: its windows end here; `autopoiesis evolve --online --adapter {adapter} --policy {run_id}" in report

    stop_bug = stop + "        raise OSError('stop bug')\n"
    error, run_id = run(source.replace(stop, stop_bug))
    assert error.startswith("autopoiesis: error: adapter live_queue: stop() failed: OSError: stop bug")
    assert json.loads(cli("report", run_id, "--runs-dir", runs, "--json").stdout)["status"] == "failed"

    observe_bug = observe + "        if until > 100:\n            raise ValueError('observe bug')\n"
    error, _ = run(source.replace(stop, stop_bug).replace(observe, observe_bug))
    assert "observe(105.0) failed: ValueError: observe bug" in error and "stop bug" not in error


def test_an_objective_the_adapter_does_not_report_is_refused_before_anything_runs(tmp_path):
    """The simulator names its metrics (``Adapter.metrics``): a misspelt objective is one line
    at once, not an error after the seed programs are scored."""
    proc = cli("evolve", "--adapter", "simulator", "--objective", "max:p99_ttfb", "--runs-dir", str(tmp_path))
    assert_one_line_error(proc, "adapter 'simulator' reports no metric 'p99_ttfb' (it reports: requests, total_time")
    assert not list(tmp_path.iterdir())  # no archive, no run
    assert cli("evolve", "--adapter", "simulator", "--scenario", "stationary", "--objective", "max:slo_attainment",
               "--population", "2", "--generations", "0", "--train-snapshots", "1", "--held-out-snapshots", "1",
               "--runs-dir", str(tmp_path)).returncode == 0  # a metric it reports is taken


def test_a_vllm_launch_without_vllm_or_without_the_model_says_which(tmp_path):
    """Before a server starts: a missing model directory, and a Python without vLLM (a bare
    virtual environment's), each get one line."""
    missing = cli("evolve", "--adapter", "vllm", "--vllm-launch", str(tmp_path / "no-model"), "--online",
                  "--runs-dir", str(tmp_path))
    assert_one_line_error(missing, "no such model directory")
    model = tmp_path / "model"
    model.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    bare = str(tmp_path / "bare" / "bin" / "python")
    no_vllm = cli("evolve", "--adapter", "vllm", "--vllm-launch", str(model), "--vllm-python", bare,
                  "--online", "--runs-dir", str(tmp_path))
    assert_one_line_error(no_vllm, f"{bare} has no vllm module")


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"autopoiesis {version('autopoiesis')}"


def test_corrupt_archive_is_one_line(tmp_path):
    (tmp_path / "archive.db").write_bytes(b"\x00garbage" * 512)
    assert_one_line_error(cli("report", "--runs-dir", str(tmp_path)), "not a usable archive")
    assert_one_line_error(cli("evolve", "--adapter", str(EXAMPLE), "--runs-dir", str(tmp_path)), "not a usable archive")


def test_broken_adapter_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def oops(:\n")
    assert_one_line_error(cli("evolve", "--adapter", str(bad), "--runs-dir", str(tmp_path)), "cannot load adapter file")


def test_third_party_entry_point_adds_an_adapter(tmp_path):
    """An installed distribution's entry point (a real .dist-info on sys.path) registers --adapter NAME."""
    (tmp_path / "toyqueue.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("sq", {str(EXAMPLE)!r})
        sq = importlib.util.module_from_spec(spec); sys.modules["sq"] = sq; spec.loader.exec_module(sq)

        class ToyQueue(sq.SingleQueueAdapter):
            '''A third-party queue adapter.'''
            name = "toyqueue"
    """))
    info = tmp_path / "toyqueue-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyqueue\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[autopoiesis.adapters]\ntoyqueue = toyqueue:ToyQueue\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), COLUMNS="200")

    listing = cli("adapters", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "toyqueue" in listing.stdout and "priority(job, now)" in listing.stdout

    proc = cli("evolve", "--adapter", "toyqueue", "--generations", "1", "--population", "4",
               "--runs-dir", str(tmp_path / "runs"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run"].startswith("toyqueue-")


def _rows(db):
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {tuple(r) for r in con.execute("SELECT program, snapshot FROM evaluations")}
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path):
    args = ["evolve", "--adapter", str(EXAMPLE), "--option", "jobs=8000", "--generations", "8",
            "--population", "12", "--seed", "5", "--workers", "2", "--held-out-snapshots", "0", "--json"]
    reference = cli(*args, "--runs-dir", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    expected = json.loads(reference.stdout)
    expected_rows = _rows(tmp_path / "ref" / "archive.db")

    runs = tmp_path / "killed"
    proc = subprocess.Popen(CLI + args + ["--runs-dir", str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = runs / "archive.db"
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(db)) < len(expected_rows) // 3:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows(db)
    assert 0 < len(before) < len(expected_rows), "the kill did not land mid-run"

    time.sleep(0.5)
    for pid in workers:  # workers die with their parent, no orphans left computing
        state = open(f"/proc/{pid}/status").read() if os.path.exists(f"/proc/{pid}/status") else "State: X"
        assert "State:\tZ" in state or "State: X" in state, f"worker {pid} outlived the killed run"

    run_id = sqlite3.connect(db).execute("SELECT id FROM runs").fetchone()[0]
    report = " ".join(cli("report", run_id, "--runs-dir", str(runs)).stdout.split())  # unwrapped
    assert f"not finished: if it is no longer running, `autopoiesis evolve --resume {run_id}" in report
    changed = cli("evolve", "--resume", run_id, "--generations", "9", "--seed", "6", "-o", "jobs=9000",
                  "--runs-dir", str(runs))
    assert_one_line_error(changed, f"--resume goes on with the settings run {run_id} began with; "
                                   "--generations 9 (the run's: 8); --seed 6 (the run's: 5); "
                                   "--option jobs=9000 (the run's: 8000)")
    assert _rows(db) == before  # refused before anything ran
    again = [a if a != "2" else "1" for a in args]  # the same command with --resume (and another --workers)
    resumed = cli(*again, "--resume", run_id, "--runs-dir", str(runs))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    after = _rows(db)

    assert before <= after  # nothing completed before the kill was lost
    assert after == expected_rows  # the same work as an uninterrupted run...
    assert len(before) + summary["evaluations"] == len(expected_rows)  # ...none of it done twice
    assert summary["champion"] == expected["champion"]
    assert summary["fitness"] == expected["fitness"]


def _stop_once(proc, db, enough, sig=signal.SIGTERM, whole_group=False, patience=120):
    """Send ``sig`` to ``proc`` (or its process group) once its archive holds ``enough()``
    rows; its children then, its output."""
    deadline = time.time() + patience
    while time.time() < deadline and not enough(db):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    (os.killpg if whole_group else os.kill)(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return children, out.decode(), err.decode()


def _count(db, table):
    try:
        return sqlite3.connect(db).execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig, whole_group", [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGHUP, True)])
def test_a_kill_mid_run_ends_it_as_ctrl_c_does_and_resume_finishes_it(tmp_path, sig, whole_group):
    """A `kill`, a service manager's stop (SIGTERM to every process of the run) or a closed
    terminal (SIGHUP to its process group) marks the run interrupted, ends its workers and
    says how to resume, as Ctrl-C does; without a handler the run died at once and its archive
    said "running" for ever. Workers signalled with it leave the ending to it: none records
    a program as having crashed its worker."""
    runs = tmp_path / "runs"
    args = ["evolve", "--adapter", str(EXAMPLE), "-o", "jobs=8000", "--generations", "8", "--population", "12",
            "--workers", "2", "--held-out-snapshots", "0", "--runs-dir", str(runs)]
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    children, _, err = _stop_once(proc, runs / "archive.db", lambda db: _count(db, "generations") >= 2, sig,
                                  whole_group)
    run_id, status = sqlite3.connect(runs / "archive.db").execute("SELECT id, status FROM runs").fetchone()
    assert proc.returncode == 128 + sig, err
    assert status == "interrupted"
    assert f"interrupted; resume with: autopoiesis evolve --resume {run_id}" in " ".join(err.split())
    assert "Traceback" not in err
    assert len(children) == 2 and all(ended(int(pid)) for pid in children)  # its workers, ended with it
    crashed = sqlite3.connect(runs / "archive.db").execute("SELECT error FROM evaluations WHERE error IS NOT NULL")
    assert [e for (e,) in crashed if e.startswith("worker")] == []
    resumed = cli("evolve", "--resume", run_id, "--runs-dir", str(runs), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["generations"] == 8
    assert Archive(runs / "archive.db").run(run_id)["status"] == "done"


def test_a_second_stop_signal_is_not_caught_and_a_host_handler_is_kept():
    """The first SIGTERM stops a run cleanly; the handler then steps aside, so a second one ends
    the process at once. A handler the host set (nohup's ignore) is left as it was."""
    from autopoiesis.cli import common

    saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in common.STOP_SIGNALS}
    try:
        with common.stop_signals_interrupt():
            with pytest.raises(common.Terminated) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            assert common.interrupted_status(stopped.value) == 143
            assert all(signal.getsignal(sig) == signal.SIG_DFL for sig in common.STOP_SIGNALS)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with common.stop_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == common._raise_terminated
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_kill_of_an_online_run_keeps_what_it_served(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen(CLI + ["evolve", "--adapter", "simulator", "--scenario", "mixed", "--online",
                                   "--runs-dir", str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, _, err = _stop_once(proc, runs / "archive.db", lambda db: _count(db, "windows") >= 2)
    assert proc.returncode == 128 + signal.SIGTERM, err
    run_id, status = sqlite3.connect(runs / "archive.db").execute(  # not its evolutions' (RUN-e001, ...)
        "SELECT id, status FROM runs ORDER BY length(id) LIMIT 1").fetchone()
    assert status == "interrupted"
    assert f"what was served so far is in the archive: autopoiesis report {run_id}" in " ".join(err.split())
    assert "Traceback" not in err
    report = cli("report", run_id, "--runs-dir", str(runs))
    assert report.returncode == 0 and "windows" in report.stdout


def test_a_resume_on_snapshots_the_archive_could_not_keep_says_so(tmp_path):
    """Params JSON cannot hold (a frozenset) are not kept; this adapter's differ in every process."""
    adapter = tmp_path / "measuring.py"
    adapter.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(EXAMPLE.parent)!r})
        from single_queue import SingleQueueAdapter
        from autopoiesis.metrics import Snapshot

        class Measuring(SingleQueueAdapter):
            def snapshot(self, seed):
                params = {{"seed": seed, "jobs": self.jobs, "load": self.load, "machine": frozenset({{os.getpid()}})}}
                return Snapshot(self.name, params)
    """))
    runs = str(tmp_path / "runs")
    first = cli("evolve", "--adapter", str(adapter), "--generations", "1", "--population", "4", "--runs-dir", runs,
                "--json")
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run"]
    with sqlite3.connect(tmp_path / "runs" / "archive.db") as con:
        con.execute("UPDATE runs SET status='interrupted'")
    resumed = cli("evolve", "--resume", run_id, "--runs-dir", runs, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: run {run_id} kept no copy of its snapshots" in resumed.stderr
    assert "Traceback" not in resumed.stderr


def test_resuming_a_finished_run_is_refused(tmp_path):
    runs = str(tmp_path)
    done = json.loads(cli("evolve", "--adapter", str(EXAMPLE), "--generations", "1", "--population", "4",
                          "--runs-dir", runs, "--json").stdout)
    assert_one_line_error(cli("evolve", "--resume", done["run"], "--runs-dir", runs), "already finished")


def test_simulator_is_registered_and_evolves(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe: the table is not cut at 80 columns
    listing = cli("adapters", env=env)
    assert "autopoiesis.adapters.simulator:SimulatorAdapter" in listing.stdout
    assert "dispatch(request, replicas, now)" in listing.stdout
    proc = cli("evolve", "--adapter", "simulator", "--scenario", "burst", "-o", "requests=600",
               "--generations", "1", "--population", "4", "--held-out-snapshots", "1",
               "--runs-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["objective"] == "min:total_time"
    assert "champion" in summary["held_out"] and "schedule:uniform" in summary["held_out"]
    assert summary["held_out"]["champion"]["requests"] == 600


def test_simulate_runs_a_policy_file(tmp_path):
    policy = tmp_path / "mine.py"
    policy.write_text("def priority(request, now):\n    return request.prompt_tokens * 2.0\n")
    proc = cli("simulate", "--scenario", "stationary", "--policy", str(policy), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["requests"] > 1000 and metrics["total_time"] > 0
    listing = cli("simulate", "--list", env=dict(os.environ, COLUMNS="200"))
    assert "spot_loss" in listing.stdout and "capacity_jsq" in listing.stdout


def test_simulate_serves_the_first_requests_as_evolve_does(tmp_path):
    """``-o requests=N`` cuts a scenario short in ``simulate`` as in ``evolve`` (it had no -o)."""
    whole = json.loads(cli("simulate", "--scenario", "stationary", "--json").stdout)
    first = cli("simulate", "--scenario", "stationary", "-o", "requests=50", "--json")
    assert first.returncode == 0, first.stderr
    metrics = json.loads(first.stdout)
    assert metrics["requests"] == 50 < whole["requests"]
    assert metrics["total_time"] < whole["total_time"] / 10
    table = cli("simulate", "--scenario", "stationary", "-o", "requests=50")
    assert "stationary (seed 0, first 50 requests)" in table.stdout


def test_a_mistaken_evolve_leaves_no_archive(tmp_path):
    runs = tmp_path / "runs"
    assert_one_line_error(cli("evolve", "--adapter", "simulator", "--scenario", "atlantis", "--runs-dir", str(runs)),
                          "unknown scenario")
    assert not runs.exists()
    cli("evolve", "--adapter", str(EXAMPLE), "--generations", "0", "--population", "4", "--runs-dir", str(runs))
    assert_one_line_error(cli("evolve", "--resume", "nope", "--runs-dir", str(runs)), "no run 'nope'")


def test_bench_serves_the_simulator_live_as_simulate_runs_it(tmp_path):
    """``bench`` drives the live system window by window; the one-shot run of the same seed must agree."""
    bench = cli("bench", "--adapter", "simulator", "--scenario", "stationary", "--json", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    assert "finished" in bench.stderr  # a progress line per window
    once = cli("simulate", "--scenario", "stationary", "--seed", "1000", "--json")
    live, offline = json.loads(bench.stdout), json.loads(once.stdout)
    assert live["requests"] == offline["requests"] > 1000
    assert live["total_time"] == pytest.approx(offline["total_time"], rel=1e-9)
    assert not (tmp_path / "runs").exists()  # the simulator writes no server logs
    other = cli("bench", "--adapter", "simulator", "--scenario", "stationary", "--live-seed", "7", "--json")
    seven = cli("simulate", "--scenario", "stationary", "--seed", "7", "--json")
    assert json.loads(other.stdout)["total_time"] == pytest.approx(json.loads(seven.stdout)["total_time"], rel=1e-9)
    assert json.loads(other.stdout)["total_time"] != pytest.approx(live["total_time"], rel=1e-6)  # another load


@pytest.mark.parametrize("args, fragment", [
    (["simulate", "--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    (["simulate", "--policy", "nope.py", "--runs-dir", "/nonexistent"], "nope.py: no such file, and no archive"),
    (["evolve", "--adapter", "simulator", "--scenario", "atlantis"], "unknown scenario"),
    (["simulate", "--scenario", "mixed@twice"], "load factor after @ must be a number"),
    # -3 served all but the last three requests, 0 every request, "abc" was a bare int() error
    (["evolve", "--adapter", "simulator", "-o", "requests=-3"], "requests must be a whole number >= 1"),
    (["evolve", "--adapter", "simulator", "-o", "requests=0"], "requests must be a whole number >= 1"),
    (["bench", "--adapter", "simulator", "-o", "requests=abc"], "requests must be a whole number >= 1"),
    (["simulate", "-o", "requests=0"], "requests must be a whole number >= 1"),
    (["simulate", "-o", "seed=3", "-o", "rate=2"], "simulate takes only -o requests=N (the scenario is --scenario, "
                                                   "the seed --seed); got -o rate, -o seed"),
])
def test_simulator_mistakes_get_one_line(tmp_path, args, fragment):
    assert_one_line_error(cli(*args), fragment)


def test_a_mistaken_scenario_file_is_one_line_for_every_command(tmp_path):
    """Before, a negative rate was "unexpected error: ValueError: lam < 0 or lam is NaN"."""
    from autopoiesis.adapters.simulator import scenario as scenarios

    bad = tmp_path / "mine.toml"
    bad.write_text((scenarios.SCENARIOS / "stationary.toml").read_text().replace("rate = 19.0", "rate = -19.0"))
    for command in (["simulate"], ["evolve", "--adapter", "simulator"], ["bench", "--adapter", "simulator"],
                    ["evolve", "--adapter", "simulator", "--online"]):
        proc = cli(*command, "--scenario", str(bad), "--runs-dir", str(tmp_path / "runs"))
        assert_one_line_error(proc, "mine.toml: workload.rate must be a number > 0, got -19.0")


def test_simulate_and_bench_take_a_run_for_its_champion(tmp_path):
    """``--policy RUN``: what an evolution found is simulated and served by its run id, as
    the same source written to a file would be."""
    runs = str(tmp_path / "runs")
    load = ("--scenario", "stationary", "--seed", "3", "--json")
    run = json.loads(cli("evolve", "--adapter", "simulator", "--scenario", "stationary", "-o", "requests=600",
                         "--generations", "1", "--population", "4", "--train-snapshots", "1",
                         "--held-out-snapshots", "0", "--runs-dir", runs, "--json").stdout)
    archive = Archive(tmp_path / "runs" / "archive.db")
    try:
        champion = tmp_path / "champion.py"
        champion.write_text(archive.program(run["champion"]).source)
    finally:
        archive.close()
    by_run = cli("simulate", *load, "--policy", run["run"], "--runs-dir", runs)
    assert by_run.returncode == 0, by_run.stderr
    assert json.loads(by_run.stdout) == json.loads(cli("simulate", *load, "--policy", str(champion)).stdout)
    assert json.loads(by_run.stdout) != json.loads(cli("simulate", *load).stdout)  # not the first baselines
    bench = ("bench", "--adapter", "simulator", "--scenario", "stationary", "-o", "requests=600", "--json")
    served = cli(*bench, "--policy", run["run"], "--runs-dir", runs)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout) == json.loads(cli(*bench, "--policy", str(champion)).stdout)
    assert json.loads(served.stdout) != json.loads(cli(*bench).stdout)
    assert_one_line_error(cli(*bench, "--policy", "nope", "--runs-dir", runs), "no such file, and no run of that id")


def test_simulate_rejects_a_hostile_policy(tmp_path):
    policy = tmp_path / "evil.py"
    policy.write_text("import os\ndef priority(request, now):\n    return 0.0\n")
    assert_one_line_error(cli("simulate", "--policy", str(policy)), "policy rejected")


def test_a_policy_file_is_read_for_its_slots_and_checked_before_anything_starts(tmp_path):
    """A file that defines no slot (a comment naming one does not count) is the wrong file; a
    slot defined as ``def priority (...)`` is found by parsing, not text (appending the
    baseline's own ``priority`` used to define it twice); and ``serve`` says a file is rejected
    before it starts the live system and makes its logs folder."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("import math\n# def priority(request, now): not this\n")
    assert_one_line_error(cli("simulate", "--policy", str(wrong)), "defines none of the slots (schedule, reschedule")
    spaced = tmp_path / "spaced.py"
    spaced.write_text("def priority (request, now):\n    return -request.arrival\n")
    proc = cli("simulate", "--scenario", "stationary", "--policy", str(spaced), "--json")
    default = cli("simulate", "--scenario", "stationary", "--json")
    assert proc.returncode == default.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_time"] != json.loads(default.stdout)["total_time"]  # its own priority ran
    broken = tmp_path / "broken.py"
    broken.write_text("def priority(:\n")
    runs = tmp_path / "runs"
    served = cli("serve", "--adapter", "engine", "--policy", str(broken), "--runs-dir", str(runs), "--duration", "5")
    assert_one_line_error(served, "--policy", "is rejected for adapter engine: syntax error on line 1")
    assert not runs.exists()


def test_missing_trace_is_one_line(tmp_path):
    scenario = tmp_path / "gone.toml"
    scenario.write_text((ROOT / "adapters" / "simulator" / "scenarios" / "trace_code.toml").read_text()
                        .replace("splitwise_code.csv", "no_such_trace.csv"))
    assert_one_line_error(cli("simulate", "--scenario", str(scenario)), "trace 'no_such_trace.csv' not found")


def test_a_limit_too_small_is_named_and_raising_it_works_at_once(tmp_path):
    """Every baseline failing on --memory-mb is the limit's fault, and the error says so; the
    rerun with the limit raised, on the same archive, scores them instead of reusing the failures."""
    args = ["evolve", "--adapter", "simulator", "--scenario", "stationary", "--generations", "0"]
    assert_one_line_error(cli(*args, "--memory-mb", "1", cwd=tmp_path),  # (the first seed's error in brackets:
                          "no seed program is valid (", "--memory-mb 1 is likely too small")  # near the cap it may time out)
    failed = json.loads(cli("report", "--list", "--json", cwd=tmp_path).stdout)[0]["run"]
    report = " ".join(cli("report", failed, cwd=tmp_path).stdout.split())  # what each seed failed on, and no resume
    assert "why generation 0 has no valid program" in report and "│ default │" in report  # a row per seed
    assert "│ memory limit exceeded │" in report  # (near the cap a seed may time out instead)
    assert "failed: generation 0 left no valid program, so there is nothing to go on from" in report
    assert_one_line_error(cli("evolve", "--resume", failed, "--objective", "total_time", cwd=tmp_path),  # its own
                          f"run {failed} has nothing to go on from: its generation 0 left no valid program")
    assert_one_line_error(cli("evolve", "--resume", failed, "--memory-mb", "2048", cwd=tmp_path),
                          "--memory-mb 2048 (the run's: 1)", "Leave them out, or start a new run with them")
    rerun = cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "champion" in rerun.stdout


def test_simulate_contains_a_policy_that_never_returns(tmp_path):
    policy = tmp_path / "loop.py"
    policy.write_text("def priority(request, now):\n    while True:\n        pass\n")
    start = time.time()
    assert_one_line_error(cli("simulate", "--scenario", "stationary", "--policy", str(policy), "--timeout", "3"),
                          "timed out")
    assert time.time() - start < 60


def test_isolate_on_the_simulator_is_a_one_line_error_that_records_no_run(tmp_path):
    runs = tmp_path / "runs"
    proc = cli("evolve", "--adapter", "simulator", "--scenario", "stationary", "--online", "--isolate",
               "--runs-dir", str(runs))
    assert_one_line_error(proc, "--isolate", "live cost model")
    listed = cli("report", "--runs-dir", str(runs))
    assert "simulator-online" not in listed.stdout + listed.stderr


def test_the_results_name_what_the_champion_gives_up_against_the_best_baseline():
    """The quick start's champion wins total time and loses the p99 TTFT three times over (its
    held-out figures): the line under the table says so, with each direction respected."""
    from autopoiesis.report import trade_offs

    results = [
        {"kind": "champion", "name": "champion", "held_out": {"total_time": 616.1, "p99_ttft": 164.7,
                                                              "slo_attainment": 0.30, "cost_usd": 3.40}},
        {"kind": "baseline", "name": "reschedule:periodic", "held_out": {"total_time": 638.4, "p99_ttft": 51.47,
                                                                         "slo_attainment": 0.79, "cost_usd": 3.51}},
        {"kind": "baseline", "name": "default", "held_out": {"total_time": 772.7, "p99_ttft": 166.1,
                                                             "slo_attainment": 0.30, "cost_usd": 4.20}},
    ]
    directions = {"total_time": "min", "p99_ttft": "min", "slo_attainment": "max", "cost_usd": "min"}
    metrics = ["total_time", "p99_ttft", "slo_attainment", "cost_usd"]
    note = trade_offs(results, "min:total_time", directions, metrics)
    assert note.startswith("Against reschedule:periodic, the best baseline on total_time, the champion is 3.5% better")
    assert "p99_ttft 164.7 against 51.47 (+220%)" in note and "slo_attainment 0.3 against 0.79 (-62%)" in note
    assert "cost_usd" not in note  # better: not a trade-off
    assert trade_offs(results, "min:total_time", {}, metrics) == ""  # no directions (an older run): nothing said
    even = [dict(r, held_out=dict(r["held_out"], p99_ttft=50.0, slo_attainment=0.8)) for r in results]
    assert trade_offs(even, "min:total_time", directions, metrics) == ""
    several = trade_offs(results, "min:total_time", directions, metrics, several=True)
    assert several.endswith("the Pareto front below shows the others.") and "--strategy nsga2" not in several


def test_a_run_with_two_objectives_reports_its_front_and_any_program_in_it_can_be_simulated(tmp_path):
    """``--strategy nsga2`` with two objectives: the results end with the last generation's
    Pareto front (``report --json`` carries it), and a program it shows, named by the 8
    characters of its id, is taken by ``--policy`` as a file would be."""
    runs = str(tmp_path / "runs")
    proc = cli("evolve", "--adapter", str(EXAMPLE), "--strategy", "nsga2", "--objective", "mean_completion_time",
               "--objective", "max_completion_time", "--generations", "2", "--population", "8", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front of the last generation" in proc.stdout
    report = json.loads(cli("report", "--runs-dir", runs, "--json").stdout)
    assert report["front"] and set(report["front"][0]["values"]) == {"mean_completion_time", "max_completion_time"}
    assert report["front"][0]["program"] == report["champion"]["program"]

    sim = ("simulate", "--scenario", "stationary", "--seed", "2", "--json")
    run = json.loads(cli("evolve", "--adapter", "simulator", "--scenario", "stationary", "-o", "requests=600",
                         "--generations", "0", "--population", "4", "--train-snapshots", "1",
                         "--held-out-snapshots", "0", "--runs-dir", runs, "--json").stdout)
    by_id = cli(*sim, "--policy", run["champion"][:8], "--runs-dir", runs)
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout) == json.loads(cli(*sim, "--policy", run["run"], "--runs-dir", runs).stdout)
    assert json.loads(by_id.stdout) != json.loads(cli(*sim).stdout)  # not the first baselines
    assert_one_line_error(cli(*sim, "--policy", "0000000000", "--runs-dir", runs), "no run of that id or a program id")
    with sqlite3.connect(tmp_path / "runs" / "archive.db") as con:  # two ids that share their first 8 characters
        con.executemany("INSERT INTO programs VALUES (?, ?, 0)", [("abcdef0100000000", "x"), ("abcdef0100000001", "y")])
    assert_one_line_error(cli(*sim, "--policy", "abcdef01", "--runs-dir", runs),
                          "--policy abcdef01: more than one archived program id starts so; give more of it")
