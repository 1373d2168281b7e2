"""Every benchmark script answers a mistaken argument with one line of usage, before any work."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, benchmark


@pytest.mark.parametrize("script, args, fragment", [
    ("paper", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("paper", ["--workers", "0"], "must be at least 1"),
    ("paper", ["--quick", "--llm", "bogus"], "--llm expects"),
    ("switching_oracle", ["--switches", "0"], "must be at least 1"),
    ("hindsight_out_of_sample", ["--scenario", "atlantis"], "unknown scenario"),
    ("static_combinations", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("static_combinations", ["--load", "0"], "must be positive"),
    ("static_combinations", ["--paper", "/nonexistent/paper.json"], "cannot read it"),
    ("simulator_baselines", ["--scenario", "atlantis"], "unknown scenario"),
    ("simulator_baselines", ["--seeds", "0"], "must be at least 1"),
    ("deploy_timing_noise", ["--program", "nope"], "unknown baseline 'nope'"),
    ("twin_fidelity", ["--scenario", "atlantis"], "unknown scenario"),
    ("cost_model_error", ["--calibration", "nope"], "no calibration 'nope'"),
    ("decision_overhead", ["--calls", "0"], "must be at least 1"),
    ("deployment_hold", ["--deployments", "0"], "must be at least 1"),
    ("one_c_call", ["--limit-s", "0"], "must be positive"),
    ("plugin_overhead", ["--requests", "0"], "must be at least 1"),
    ("evaluator_throughput", ["--jobs", "-3"], "must be at least 1"),
    ("simulator_speed", ["--rate", "-1"], "must be positive"),
    ("scenario_load", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("scenario_load", ["--seeds", "0"], "must be at least 1"),
    ("engine_online", ["--scenario", "atlantis"], "unknown engine load 'atlantis'"),
    ("engine_online", ["--rate", "0"], "must be positive"),
    ("engine_online", ["--rate", "3", "--load-factor", "1"], "not allowed with"),
    ("engine_online", ["-o", "hidden=100", "-o", "heads=3"], "multiple of heads"),
    ("serving_cost", ["--scenario", "atlantis"], "unknown engine load 'atlantis'"),
    ("serving_cost", ["--load-factor", "0"], "must be positive"),
    ("serving_cost", ["-o", "hidden=100", "-o", "heads=3"], "multiple of heads"),
    ("engine_costs", ["--repeats", "0"], "must be at least 1"),
    ("engine_costs", ["-o", "layers"], "expects KEY=VALUE"),
    ("engine_costs", ["-o", "device=tpu"], "device type"),
    ("recall", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("recall", ["--teach", "0"], "must be at least 1"),
    ("offline_start", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("offline_start", ["--evolution-cost", "0"], "must be positive"),
    ("knob_sweep", ["--knob", "margin=0.01,x"], "margin=x: expected a number"),
    ("knob_sweep", ["--knob", "history=0,2"], "OnlineConfig.history must be a whole number >= 1"),
    ("knob_sweep", ["--knob", "seed=1,2"], "KNOB one of window_s"),
    ("knob_sweep", ["--knob", "period=4"], "at least two values"),
    ("knob_sweep", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("deployment_value", ["--scenario", "atlantis"], "unknown scenario 'atlantis'"),
    ("deployment_value", ["--margin", "-1"], "must be non-negative"),
    ("deployment_value", ["--start", "yesterday"], "invalid choice"),
    ("readable_champions", ["--adapter", "nope"], "unknown adapter 'nope'"),
    ("readable_champions", ["--adapter", "simulator", "-o", "scenario=atlantis"], "atlantis"),
    ("readable_champions", ["-o", "nokey"], "expects KEY=VALUE"),
    ("readable_champions", ["--seeds", "0"], "must be at least 1"),
    ("vllm_twin_refit", ["/nonexistent"], "no requests.jsonl"),
    ("vllm_twin_refit", ["--window", "0"], "--window must be positive"),
    ("vllm_online", ["/nonexistent"], "no model at /nonexistent"),
    ("vllm_online", [".", "--arms", "default,oracle"], "unknown arm 'oracle'"),
    ("vllm_online", [".", "--rate", "1", "--load-factor", "2"], "not allowed with"),
    ("vllm_online", [".", "--repeats", "0"], "must be at least 1"),
    ("vllm_step_times", ["/nonexistent"], "no model directory at /nonexistent"),
    ("vllm_step_times", [".", "--dtypes", "bf16"], "unknown dtype 'bf16'"),
    ("vllm_step_times", [".", "--prompts", "32,x"], "comma-separated whole numbers"),
    ("vllm_step_times", [".", "--vllm-args", "--dtype float32"], "must not set --dtype"),
])
def test_a_mistaken_argument_is_one_line_of_usage(script, args, fragment):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in proc.stderr.splitlines()[-1]


def test_vllm_online_args_add_to_the_online_arms_flags_and_win_where_repeated(tmp_path):
    """`--online-args "--policy FILE"` replaced `--window 10 --period 1`, so the online arms ran
    30 s windows and evolved once in 120 s of load (a half-hour measurement lost). Now they
    come after those flags, and a flag given again wins, as `evolve` parses it."""
    from autopoiesis.cli import build_parser

    vllm_online = benchmark("vllm_online")
    (tmp_path / "config.json").write_text("{}")
    args = vllm_online.parse_args([str(tmp_path), "--rate", "2", "--online-args", "--policy sp.py --window 5"])
    evolve = build_parser().parse_args
    for arm in ("online", "online_never_deploying"):
        command = vllm_online.arm_command(args, arm, 2.0, 1000, tmp_path / arm)
        parsed = evolve(command[len(vllm_online.CLI):])
        assert (parsed.online, parsed.window, parsed.period, parsed.policy) == (True, 5.0, 1, "sp.py")
        assert (parsed.margin == 1000) == (arm == "online_never_deploying")
    parsed = evolve(vllm_online.arm_command(vllm_online.parse_args([str(tmp_path), "--rate", "2"]), "online", 2.0,
                                            1000, tmp_path / "plain")[len(vllm_online.CLI):])
    assert (parsed.window, parsed.period, parsed.policy) == (10.0, 1, None)


def test_vllm_online_runs_its_arms_in_rounds_and_pairs_each_with_its_own_rounds_online_run(tmp_path, monkeypatch,
                                                                                          capsys):
    """Test double for the arms' commands (minutes of real vLLM each; tests/test_vllm_online.py
    runs the real `evolve --online`): the order, the pairing and the ranges are this script's."""
    vllm_online = benchmark("vllm_online")
    (tmp_path / "config.json").write_text("{}")
    order, served = [], {("default", 1): 10.0, ("online", 1): 8.0, ("default", 2): 30.0, ("online", 2): 15.0}

    def run_arm(args, arm, rate, seed, runs, repeat=0):
        order.append((arm, repeat + 1))
        value = served[(arm, repeat + 1)]
        lag = {"arrival_lag_last_s": 0.5} if repeat else {}  # the first round's records gave none
        return {"total_time": value, "mean_e2e": value, "p99_ttft": 1.0, "slo_attainment": 1.0, "wall_s": 0.0, **lag}

    monkeypatch.setattr(vllm_online, "run_arm", run_arm)
    assert vllm_online.main([str(tmp_path), "--rate", "2", "--arms", "default,online", "--repeats", "2",
                             "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    assert order == [("default", 1), ("online", 1), ("default", 2), ("online", 2)]  # rounds, not arm after arm
    summary = json.loads(capsys.readouterr().out)
    assert [(r["seed"], r["repeat"]) for r in summary["rounds"]] == [(1000, 1), (1000, 2)]
    # each round's own pair: (10 - 8) / 10 and (30 - 15) / 30, not the means' (20 - 11.5) / 20
    assert summary["improvement"]["default"]["mean_e2e"] == pytest.approx((0.2 + 0.5) / 2)
    order.clear()
    assert vllm_online.main([str(tmp_path), "--rate", "2", "--arms", "default,online", "--repeats", "2",
                             "--runs-dir", str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out
    assert "20 (10-30)" in table and "11.5 (8-15)" in table  # the mean, then its range
    assert " 0.5 " in table and "nan" not in table  # the latest arrivals of the rounds that measured them


def test_the_results_docs_name_the_commit_whose_code_made_them(tmp_path, monkeypatch):
    """docs/results*.md went many commits without a rerun, and nothing in them said so."""
    paper = benchmark("paper")
    monkeypatch.setattr(paper, "ROOT", tmp_path)
    assert paper.source_commit() == ""  # not a git checkout: the docs say nothing
    git = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                                       check=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "autopoiesis").mkdir()
    (tmp_path / "autopoiesis" / "online.py").write_text("MARGIN = 0.01\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "docs" / "results.md").write_text("new\n")  # the docs it writes change nothing
    assert paper.source_commit() == head
    (tmp_path / "autopoiesis" / "online.py").write_text("MARGIN = 0.03\n")
    assert paper.source_commit() == f"{head} with uncommitted changes"
