"""The settings tests/conftest.py gives the test workers and, through
tests/site/sitecustomize.py, every Python process the tests start."""

import gc
import os
import subprocess
import sys

from tests import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_process_collects_garbage_at_the_suites_thresholds():
  expected = tuple(int(v) for v in conftest.GC_THRESHOLDS.split(","))
  assert expected != (700, 10, 10)  # Python's default
  assert gc.get_threshold() == expected
  out = subprocess.run(
      [sys.executable, "-c", "import gc; print(gc.get_threshold())"],
      cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
  assert out.stdout.strip() == str(expected), out
