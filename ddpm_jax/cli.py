"""Shared plumbing of the command-line entry points: one-line errors."""

from __future__ import annotations

import contextlib
import sys
from typing import NoReturn

from absl import app

# Errors whose message is written for the user: printed as one line.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, KeyError)


def fail(message: str) -> NoReturn:
  """Prints ``error: message`` to stderr and exits with status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


@contextlib.contextmanager
def errors_as_one_line():
  """Turns the user-facing errors raised inside into :func:`fail`."""
  try:
    yield
  except USER_ERRORS as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(msg)


def run(main) -> int:
  """``absl.app.run(main)`` with flag errors reduced to one line."""
  try:
    app.run(main)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else 1
  return 0
