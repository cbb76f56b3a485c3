"""The scripts in `bench/` as modules for the tests. `bench/` is not a package (nor installed): its scripts import
each other by file name, as when run with `python bench/<name>.py`."""
import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """`bench/<name>.py`, imported as the module `name` with `bench/` on the path while it imports."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
