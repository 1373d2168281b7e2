"""LLM operators against HTTP test doubles of the OpenAI and Anthropic wire formats.

No hosted LLM can be reached here, so these doubles (tests/llm_doubles.py) stand in
for it; the clients, retries, ledger, extraction, sandboxing and replay are real.
"""

import os

import pytest

from autopoiesis import Archive, Config, Evolution
from autopoiesis.archive import llm_calls
from autopoiesis.llm import AnthropicClient, Budget, OpenAIClient, RetryPolicy, Session, extract
from autopoiesis.llm.extract import ExtractionError
from autopoiesis.operators import llm as llm_ops
from conftest import single_queue
from llm_doubles import ScriptedLLM, reply

GOOD_DIFF = "<<<<<<< SEARCH\n    return job.arrival\n=======\n    return job.size\n>>>>>>> REPLACE"
REWRITE = "```python\ndef priority(job, now):\n    return job.size * 2.0 + 1.0\n```"
PROSE = ("Shorter jobs first, with a little aging.\n```python\ndef priority(job, now):\n"
         "    return job.size + 0.1 * job.arrival\n```\nThis should lower the mean completion time.")
SEVERAL = ("Draft:\n```python\ndef priority(job, now):\n    return 0.0\n```\nFinal:\n```python\n"
           "def priority(job, now):\n    return job.size - 0.01 * (now - job.arrival)\n```")
BAD_DIFF = "<<<<<<< SEARCH\n    return job.deadline\n=======\n    return 1.0\n>>>>>>> REPLACE"

SCRIPT = [
    reply(GOOD_DIFF), reply(REWRITE), reply(PROSE), reply(SEVERAL), reply(BAD_DIFF),
    reply("I would rather not write code today."), reply(""),
    ("malformed",), reply(GOOD_DIFF.replace("job.size", "job.size * 3.0")),
    ("status", 429, {"retry-after": "0.3"}), reply(REWRITE.replace("2.0", "4.0")),
    ("status", 500, {}), reply(PROSE.replace("0.1", "0.2")),
    ("stall", 2.5), reply(SEVERAL.replace("0.01", "0.02")),
    ("cut",), reply(REWRITE.replace("1.0", "3.0")),
    reply(REWRITE.replace("2.0", "1.5")),
]


def make_client(wire, url):
    if wire == "openai":
        return OpenAIClient("gpt-4o-mini", base_url=url, api_key="test-double", timeout=1.5)
    return AnthropicClient("claude-3-5-haiku-latest", base_url=url, api_key="test-double", timeout=1.5)


def run_with(session, archive, seed=0):
    adapter = single_queue.SingleQueueAdapter(jobs=60)
    config = Config(population=6, generations=3, seed=seed, workers=1, held_out_snapshots=1, train_snapshots=1)
    operators = [(llm_ops.Mutate(session), 1.0), (llm_ops.Crossover(session), 0.3)]
    evolution = Evolution(adapter, config, archive, operators=operators)
    return evolution.run()


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_run_continues_through_every_kind_of_reply_and_failure(wire):
    double = ScriptedLLM(wire, SCRIPT)
    sleeps = []
    try:
        archive = Archive()
        session = Session(make_client(wire, double.url), archive, run_id="pending",
                          retry=RetryPolicy(attempts=3, base_delay_s=0.01), sleep=sleeps.append)
        session.run_id = "live"
        result = run_with(session, archive)
    finally:
        double.close()
    rows = llm_calls(archive, "live")
    outcomes = " | ".join(str(r["outcome"]) for r in rows)
    errors = " | ".join(str(r["error"]) for r in rows)
    assert "(diff)" in outcomes and "(rewrite)" in outcomes
    assert "unusable: diff block 1 does not apply" in outcomes
    assert "unusable: no code found in the response" in outcomes
    assert "unusable: empty response" in outcomes
    assert "rate limited (429)" in errors and "HTTP 500" in errors
    assert "timed out" in errors
    assert "connection failed or cut short" in errors
    assert "malformed response: JSONDecodeError" in errors
    assert any(s >= 0.3 for s in sleeps), "Retry-After was not honoured"
    assert session.ledger.tokens > 0 and session.ledger.calls == len(rows)
    assert session.ledger.usd > 0  # priced models
    # evolution still worked: the LLM's SJF-like children beat FCFS
    assert result.held_out["champion"]["mean_completion_time"] < result.held_out["fcfs"]["mean_completion_time"]


def test_replay_reproduces_a_run_bit_for_bit_without_the_network():
    double = ScriptedLLM("openai", SCRIPT)
    try:
        archive = Archive()
        live = Session(make_client("openai", double.url), archive, "live",
                       retry=RetryPolicy(attempts=3, base_delay_s=0.01), sleep=lambda s: None)
        first = run_with(live, archive)
        requests = double.requests
        replay = Session.replay(archive, "again", source_run="live")
        second = run_with(replay, archive)
        assert double.requests == requests  # not one request in replay
    finally:
        double.close()
    assert second.champion.source == first.champion.source
    assert second.fitness.values == first.fitness.values
    assert second.programs == first.programs


def test_budget_stops_the_run_with_a_clear_reason():
    from autopoiesis.evolution import EvolutionError

    double = ScriptedLLM("openai", [reply(GOOD_DIFF)])
    try:
        archive = Archive()
        session = Session(make_client("openai", double.url), archive, "live", budget=Budget(max_calls=2))
        with pytest.raises(EvolutionError, match="LLM call budget spent"):
            run_with(session, archive)
    finally:
        double.close()
    run = archive.runs()[-1]
    assert run["status"] == "budget spent"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty response"), ("no code here", "no code found"),
    ("```python\nx = 1\n```", "defines any of"), (BAD_DIFF, "does not apply"),
    ("```python\ndef priority(job, now)\n    return 1\n```", "syntax error"),
])
def test_extraction_failures_have_reasons(text, fragment):
    with pytest.raises(ExtractionError, match=fragment):
        extract(text, single_queue.FCFS, ["priority"])


def test_extraction_keeps_the_rest_of_a_program():
    parent = "import math\n\nW = 2.0\n\n\ndef helper(x):\n    return x\n\n\ndef priority(job, now):\n    return job.arrival\n"
    child, how = extract("```python\ndef priority(job, now):\n    return helper(job.size) * W\n```", parent, ["priority"])
    assert how == "rewrite" and "helper(job.size)" in child
    diff = "<<<<<<< SEARCH\nW = 2.0   \n=======\nW = 3.0\n>>>>>>> REPLACE"  # trailing spaces: a common slip
    child, how = extract(diff, parent, ["priority"])
    assert how == "diff" and "W = 3.0" in child and "def helper" in child


def test_cli_records_reports_and_replays_an_llm_run(tmp_path):
    """--llm-url at the double, then --llm replay:RUN with no server at all."""
    import json
    import subprocess
    import sys

    from conftest import EXAMPLE

    double = ScriptedLLM("openai", SCRIPT[:7] + [reply(REWRITE.replace("2.0", "0.5"))])
    runs = str(tmp_path)
    base = [sys.executable, "-m", "autopoiesis.cli", "evolve", "--runs-dir", runs, "--json"]
    try:
        live = subprocess.run(base + ["--adapter", str(EXAMPLE), "-o", "jobs=60", "--generations", "2",
                                      "--population", "4", "--llm-url", double.url, "--llm-model", "gpt-4o-mini",
                                      "--llm-rate", "1.0"], capture_output=True, text=True, timeout=300)
    finally:
        double.close()
    assert live.returncode == 0, live.stderr
    first = json.loads(live.stdout)
    shown = subprocess.run(base[:-1] + ["--llm", f"replay:{first['run']}"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "LLM: " in shown.stdout and " failed" not in shown.stdout.split("LLM: ")[1]  # a line, with no failure
    report = subprocess.run([sys.executable, "-m", "autopoiesis.cli", "report", first["run"], "--runs-dir", runs, "--json"],
                            capture_output=True, text=True)
    llm = json.loads(report.stdout)["llm"]
    assert llm["calls"] > 0 and llm["prompt_tokens"] > 0 and llm["children"] > 0
    assert 0 < llm["valid_child_rate"] <= 1 and llm["usd"] > 0

    again = subprocess.run(base + ["--llm", f"replay:{first['run']}"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["run"] != first["run"]
    assert (second["champion"], second["fitness"]) == (first["champion"], first["fitness"])


def test_an_llm_endpoint_that_refuses_every_call_is_said_at_the_end_of_the_run(tmp_path):
    """A mistyped --llm-url (here a real port with nothing listening) fails every call; the
    run goes on with the offline operators and ends with a line saying so, not in silence."""
    import socket
    import subprocess
    import sys

    from conftest import EXAMPLE

    with socket.socket() as sock:  # a port that was free a moment ago: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "autopoiesis.cli", "evolve", "--adapter", str(EXAMPLE),
                           "-o", "jobs=60", "--generations", "1", "--population", "4", "--runs-dir", str(tmp_path),
                           "--llm-url", f"http://127.0.0.1:{port}/v1", "--llm-model", "m"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    line = " ".join(proc.stdout[proc.stdout.index("\nLLM: ") + 1:].split())  # the last line, unwrapped
    calls = int(line.split()[1])
    assert calls > 0 and line.startswith(f"LLM: {calls} call(s), 0 tokens, $0.00; {calls} failed, the last: "), line
    assert "connection" in line and "(every call: check --llm, --llm-url and the API key)" in line


def test_weighted_ensemble_sends_most_calls_to_the_cheap_model():
    from autopoiesis.llm import Ensemble

    cheap, strong = ScriptedLLM("openai", [reply(GOOD_DIFF)]), ScriptedLLM("anthropic", [reply(REWRITE)])
    try:
        client = Ensemble([(make_client("openai", cheap.url), 0.8), (make_client("anthropic", strong.url), 0.2)], seed=1)
        archive = Archive()
        session = Session(client, archive, "ens")
        for i in range(40):
            session.ask("system", f"question {i}")
    finally:
        cheap.close()
        strong.close()
    models = [row["model"] for row in llm_calls(archive, "ens")]
    assert cheap.requests + strong.requests == 40
    assert 20 < cheap.requests < 40 and strong.requests > 0
    assert models.count("gpt-4o-mini") == cheap.requests  # each call priced as the model that answered


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrency_limit_holds_under_threads(limit):
    from concurrent.futures import ThreadPoolExecutor

    double = ScriptedLLM("openai", [("stall", 0.3)])
    try:
        archive = Archive(":memory:")
        session = Session(make_client("openai", double.url), archive, "threads", budget=Budget(concurrency=limit))
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda i: session.ask("s", f"q{i}"), range(6)))
    finally:
        double.close()
    assert session.peak_in_flight == limit
    assert len(llm_calls(archive, "threads")) == 6  # every threaded call recorded


def test_budget_stop_then_resume_asks_nothing_twice(tmp_path):
    import json
    import sqlite3
    import subprocess
    import sys

    from conftest import EXAMPLE

    replies = [reply(REWRITE.replace("1.0", f"{i}.5")) for i in range(40)]
    double = ScriptedLLM("openai", replies)
    runs = str(tmp_path)
    cli = [sys.executable, "-m", "autopoiesis.cli", "evolve", "--runs-dir", runs]
    try:
        first = subprocess.run(cli + ["--adapter", str(EXAMPLE), "-o", "jobs=60", "--generations", "3", "--population", "4",
                                      "--llm-url", double.url, "--llm-model", "gpt-4o-mini", "--llm-rate", "1.0",
                                      "--llm-max-calls", "5"], capture_output=True, text=True, timeout=300)
        assert first.returncode == 2
        assert "LLM call budget spent (5 of 5)" in first.stderr and "--resume" in first.stderr
        last = first.stderr.strip().splitlines()[-1]  # progress lines may come first; the error is one line
        assert last.startswith("autopoiesis: error: LLM call budget spent") and "Traceback" not in first.stderr
        run_id = sqlite3.connect(f"{runs}/archive.db").execute("SELECT id FROM runs").fetchone()[0]
        second = subprocess.run(cli + ["--resume", run_id, "--llm-max-calls", "100", "--json"],
                                capture_output=True, text=True, timeout=300)
    finally:
        double.close()
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["generations"] == 3
    rows = sqlite3.connect(f"{runs}/archive.db").execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
    assert double.requests == rows  # recorded answers were reused, not asked again
