import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

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
