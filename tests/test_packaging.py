"""The built wheel installs adapters/ and search/ under the autopoiesis namespace only."""

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("autopoiesis-*.whl")
    return path


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "autopoiesis/adapters/base.py" in names
    assert "autopoiesis/search/nsga2.py" in names
    assert "autopoiesis/operators/gp.py" in names
    assert "autopoiesis/adapters/engine/model.py" in names and "autopoiesis/adapters/vllm/router.py" in names
    for data in ("autopoiesis/adapters/simulator/data/gpus.toml", "autopoiesis/adapters/simulator/scenarios/mixed.toml",
                 "autopoiesis/adapters/simulator/baselines/dispatch_round_robin.py",
                 "autopoiesis/adapters/simulator/data/calibration/default.toml"):
        assert data in names, data
    tops = {n.split("/")[0] for n in names}
    assert "search" not in tops and "adapters" not in tops
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "autopoiesis = autopoiesis.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_imports_without_the_source_tree(wheel, tmp_path):
    """Unpacked alone (no editable finder: python -S), the namespace resolves from the wheel."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import sys; sys.path[:0] = sys.argv[1:];"
        "import autopoiesis.search, autopoiesis.adapters.base as b, autopoiesis;"
        "from autopoiesis import *;"  # every public name, the online loop's included
        "print(autopoiesis.search.__file__); print(b.__file__); print(autopoiesis.Controller.__module__)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "site"), *deps],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    *files, controller = proc.stdout.splitlines()
    for line in files:
        assert line.startswith(str(tmp_path / "site" / "autopoiesis")), line
    assert controller == "autopoiesis.online"
