"""The README's library example runs as written and beats its FCFS seed."""

import ast
import re
import subprocess
import sys

from conftest import ROOT


def test_readme_library_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    held_out = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert held_out["champion"]["mean_completion_time"] < held_out["fcfs"]["mean_completion_time"]
    assert (tmp_path / "runs" / "archive.db").exists()


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert [c.strip() for c in commands] == [
        "pip install -e . && autopoiesis evolve --adapter simulator --scenario mixed",
        "pip install -e '.[dev]' && python -m pytest",
    ]
    assert "pip install -e '.[dev]' && python -m pytest" in (ROOT / ".ci" / "run").read_text()
