import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

import stall_watch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "single_queue.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("single_queue_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["single_queue_example"] = module
    spec.loader.exec_module(module)
    return module


single_queue = _load_example()


def benchmark(name: str):
    """A script under benchmarks/, imported as a module."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@pytest.fixture
def queue_adapter():
    return single_queue.SingleQueueAdapter(jobs=120)


_stalls: stall_watch.StallWatch | None = None


def pytest_configure(config):
    global _stalls
    _stalls = stall_watch.StallWatch()


def pytest_runtest_logstart(nodeid, location):
    _stalls.test = nodeid


@pytest.hookimpl(trylast=True)  # after the durations, next to the failures' short summary
def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_stalls.summary())


def pytest_unconfigure(config):
    if _stalls is not None:
        _stalls.stop()
