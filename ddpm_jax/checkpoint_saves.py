"""A training run's checkpoint saves: asynchronous, each one confirmed on
storage, and a failed one stopping the run at the next step boundary with
one line.

Orbax writes a checkpoint in background threads. When that write fails (a
full disk, a denied permission, an unreachable bucket), Orbax logs the
error with its traceback from each thread involved and goes on: the run
would notice only at the next save, after a flood of tracebacks, leaving
the partial folder behind. Here Orbax's error logs are kept as the
failure's cause instead of printed, and the failure is raised as a
:class:`SaveError` naming the path and the cause, once the save's partial
folder is removed.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any, List, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ddpm_jax import checkpoints, paths, storage_messages, write_deadlines

# A save's outcome, as each process sees it.
PENDING, DONE, FAILED = 0, 1, 2
# How long the checkpoints' close may take once a save has failed.
_CLOSE_AFTER_FAILURE_S = 30.0


class SaveError(paths.StorageError):
  """A checkpoint could not be written."""


class _OrbaxErrors(logging.Filter):
  """Keeps the exceptions Orbax logs (with tracebacks) from its save
  threads, dropping those records from the console, and asyncio's notes of
  the failed writes' futures that no one awaited."""

  def __init__(self):
    super().__init__()
    self._lock = threading.Lock()
    self._errors: List[BaseException] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not record.exc_info:
      return True
    where = record.pathname.replace("\\", "/").split("/")
    if "orbax" in where:
      self.add(record.exc_info[1])
      return False
    return not (record.name == "asyncio" or "asyncio" in where)

  def add(self, error: BaseException) -> None:
    with self._lock:
      self._errors.append(error)

  def seen(self) -> bool:
    with self._lock:
      return bool(self._errors)

  def take(self) -> List[BaseException]:
    with self._lock:
      errors, self._errors = self._errors, []
    return errors


def _root_cause(errors: List[BaseException]) -> str:
  """The cause of a failed save in a few words, from the errors seen: an
  OSError's message, or the last clause of a TensorStore error ('...:
  No space left on device [os_error_code='28']')."""
  for error in errors:
    e = error
    while e is not None:
      if isinstance(e, OSError) and e.strerror:
        return paths.cause(e)
      e = e.__cause__ or e.__context__
  if not errors:
    return "its folder was not committed"
  text = storage_messages.without_internals(
      (str(errors[0]).strip().splitlines() or [""])[0])
  if "os_error_code" in text or ": " in text:
    return text.rsplit(": ", 1)[-1][:200]
  return paths.cause(errors[0])


class Saves:
  """The checkpoint saves of a training run on ``manager``; with
  ``deadlines`` (:class:`ddpm_jax.write_deadlines.Deadlines`), a save not
  confirmed within their time limit ends the process with one line."""

  def __init__(self, manager: ocp.CheckpointManager,
               deadlines: Optional[write_deadlines.Deadlines] = None):
    self._manager = manager
    self._deadlines = deadlines or write_deadlines.Deadlines(0)
    self._pending: Optional[int] = None
    self._failed: Optional[int] = None  # the step of a failed save
    self._failure = ""  # and its message
    self._errors = _OrbaxErrors()
    self._loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for logger in self._loggers:
      logger.addFilter(self._errors)
    storage_messages.quiet_storage_noise()

  def save(self, step: int, state: Any, data_position: dict) -> None:
    """Starts saving ``state`` as ``step`` (after confirming the previous
    save). Raises :class:`SaveError` if the save cannot start, and
    :class:`ddpm_jax.checkpoints.NonFiniteStateError` for a state with a
    NaN or an infinity (nothing saved)."""
    self.check(wait=True)
    where = paths.join(str(self._manager.directory), str(step))
    last = self._manager.latest_step()
    limit = self._deadlines.timeout_s

    def late():
      return write_deadlines.unanswered(
          f"checkpoint {step} could not be written to {where}", limit, last)

    self._deadlines.arm(("checkpoint", step), late)
    try:
      checkpoints.save(self._manager, step, state, data_position)
    except checkpoints.NonFiniteStateError:
      self._deadlines.disarm(("checkpoint", step))
      raise
    except Exception as e:  # pylint: disable=broad-except
      self._errors.take()
      self._fail(step, [e])
    self._pending = step

  def check(self, wait: bool = False) -> None:
    """At a step boundary: confirms the pending save once it has finished
    (``wait``: waits for it); raises :class:`SaveError` if it failed. With
    several processes all call this at the same steps and agree on the
    outcome (a gather per call while a save is unconfirmed)."""
    if self._pending is None:
      return
    step = self._pending
    outcome = self._outcome(step, wait)
    if jax.process_count() > 1:
      seen = np.asarray(multihost_utils.process_allgather(
          np.int32(outcome)))
      outcome = (FAILED if (seen == FAILED).any() else
                 DONE if (seen == DONE).all() else PENDING)
    if outcome == PENDING:
      return
    self._pending = None
    self._deadlines.disarm(("checkpoint", step))
    if outcome == FAILED:
      self._fail(step, self._errors.take())

  def _outcome(self, step: int, wait: bool) -> int:
    # A write that failed here fails the save at once: the other
    # processes' parts of it may be waiting on this one's, for ever.
    if self._errors.seen():
      return FAILED
    if wait:
      try:
        self._manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        self._errors.add(e)
    elif self._manager.is_saving_in_progress():
      return PENDING
    if jax.process_index() != 0:  # the primary process commits
      return FAILED if self._errors.seen() else DONE
    path = paths.join(str(self._manager.directory), str(step))
    try:
      committed = (paths.isdir(path) and
                   ocp.path.step.is_path_finalized(path))
    except Exception as e:  # pylint: disable=broad-except
      self._errors.add(e)
      committed = False
    return DONE if committed and not self._errors.seen() else FAILED

  def _remove_partial(self, step: int, settle_s: float = 1.0,
                      timeout_s: float = 60.0) -> str:
    """Removes the partial folder of the failed save of ``step`` (process
    0); what went wrong doing so, as a clause for the message, or ''.

    The failed save's other writes may still be landing (Orbax stops
    waiting at the first error): the folder is removed again until it has
    stayed away for ``settle_s``."""
    if jax.process_index() != 0:
      return ""
    directory = str(self._manager.directory)
    final = paths.join(directory, str(step)).rstrip("/")

    def partial():
      return [str(t.get()) for t in
              ocp.path.step.all_temporary_paths(directory)
              if str(t.get_final()).rstrip("/") == final]

    deadline, error = time.time() + timeout_s, None
    while time.time() < deadline:
      try:
        found = partial()
        for folder in found:
          paths.rmtree(folder)
      except OSError as e:  # a write landing while the folder goes
        error = e
        if not isinstance(e, (FileExistsError, FileNotFoundError)) and (
            e.errno not in (errno.ENOTEMPTY, errno.EEXIST)):
          break
        time.sleep(0.2)
        continue
      except Exception as e:  # pylint: disable=broad-except
        error = e  # storage unreachable: retrying would only wait
        break
      error = None
      if not found:
        time.sleep(settle_s)
        if not partial():
          return ""
    return (f"; its partial folder could not be removed "
            f"({paths.cause(error) if error else 'it kept reappearing'})")

  def _fail(self, step: int, errors: List[BaseException]) -> None:
    # The save's deadline stays armed while its partial folder goes.
    self._failed = step
    left = self._remove_partial(step)
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      pass
    self._deadlines.disarm(("checkpoint", step))
    where = paths.join(str(self._manager.directory), str(step))
    self._failure = (f"checkpoint {step} could not be written to {where} "
                     f"({_root_cause(errors)}){left}")
    raise SaveError(self._failure)

  def close(self) -> None:
    """Confirms the last save (:class:`SaveError` if it failed) and closes
    the manager. After a failure Orbax's remaining error logs stay
    silenced: its other writes of the failed save end in errors too."""
    directory = str(self._manager.directory)
    limit = self._deadlines.timeout_s
    if self._failed is None:
      self._deadlines.arm("close", lambda: write_deadlines.unanswered(
          f"the checkpoints in {directory} could not be closed", limit,
          stopped=False))
    else:  # the failed save's other writes (or processes) may never end
      self._deadlines.arm("close", lambda: (
          f"{self._failure}; training stopped: fix the storage, then run "
          f"the same command to continue"), timeout_s=_CLOSE_AFTER_FAILURE_S)
    try:
      self._close()
    finally:
      self._deadlines.disarm("close")

  def _close(self) -> None:
    try:
      if self._failed is None:
        self.check(wait=True)
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failed is None:
          raise
      if self._failed is None:
        for logger in self._loggers:
          logger.removeFilter(self._errors)
      else:  # a write of the failed save that ended after the first sweep
        self._remove_partial(self._failed)
