"""The benchmarks build their tiny models with the tests' support module, `tests/tiny.py`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny

__all__ = ["tiny"]
