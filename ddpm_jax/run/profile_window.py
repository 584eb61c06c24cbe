"""A profiler window over training steps (``training.profile_steps``): a
``jax.profiler`` trace of steps START to END on process 0, written into
``WORKDIR/profile/`` (local or gs://), which TensorBoard's profile plugin
reads; and :func:`traced`, the same for a block (sample.py's
``--profile``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Optional

import jax

from ddpm_jax import paths, validation

PROFILE_DIR = "profile"


def _start() -> str:
  """Starts a trace into a new local folder (the profiler writes only
  local files); returns the folder."""
  local = tempfile.mkdtemp(prefix="ddpm_jax_profile_")
  jax.profiler.start_trace(local)
  return local


def _finish(local: str, target: str) -> str:
  """Stops the trace started into ``local`` and copies it into ``target``
  (local or gs://); returns ``target``."""
  jax.profiler.stop_trace()
  try:
    for top, _, files in os.walk(local):
      for name in files:
        path = os.path.join(top, name)
        with open(path, "rb") as f:
          paths.write_bytes(paths.join(target, os.path.relpath(path, local)),
                            f.read())
  finally:
    shutil.rmtree(local, ignore_errors=True)
  return target


@contextlib.contextmanager
def traced(target: Optional[str]):
  """A ``jax.profiler`` trace of the block written into ``target`` (no
  trace if None), for sample.py's ``--profile``."""
  if target is None:
    yield
    return
  local = _start()
  try:
    yield
  finally:
    _finish(local, target)


class ProfileWindow:
  """Starts a trace before the call that runs step START and stops it once
  step END has run (the state ready), on the lead process; the trace is
  written to a local folder first (the profiler writes only local files)
  and then copied into ``WORKDIR/profile/``."""

  def __init__(self, spec: str, workdir: str, lead: bool):
    self._steps = validation.profile_steps(spec) if lead else None
    self._workdir = workdir
    self._local: Optional[str] = None

  @property
  def tracing(self) -> bool:
    """Whether a trace is running."""
    return self._local is not None

  def before(self, step: int, n: int) -> None:
    """Before the call that runs steps ``step + 1`` to ``step + n``."""
    if self._steps is None or self._local is not None:
      return
    start, end = self._steps
    if step < end and step + n >= start:
      self._local = _start()

  def after(self, done: int, state: Any) -> Optional[str]:
    """After the call that ran up to step ``done``: once END has run, stops
    the trace and returns where it was written."""
    if self._local is None or done < self._steps[1]:
      return None
    jax.block_until_ready(state)
    return self.close()

  def close(self) -> Optional[str]:
    """Stops a trace in progress (the run ended inside the window) and
    writes it; returns where, or None if none was running."""
    if self._local is None:
      return None
    local, self._local, self._steps = self._local, None, None
    return _finish(local, paths.join(self._workdir, PROFILE_DIR))
