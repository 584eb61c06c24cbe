"""Deadlines on a training run's writes to its workdir.

A storage outage does not always fail a write: a bucket that stops
answering leaves the clients retrying (TensorStore's GCS driver up to 32
times with back-off, gcsfs on every timeout), and an Orbax save blocked
that way holds the training loop, or an interpreter's exit, for as long
as the outage lasts. A :class:`Deadlines` object watches the writes in
flight from a thread of its own: one still unfinished after its time
limit ends the process with one line on stderr naming the write, the
limit and what is left (exit status 1). The process is ended there and
then: the thread that waits on the storage cannot be interrupted, and
nothing more can be written while it is unreachable.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Dict, Hashable, Optional, Tuple


def _exit_with(line: str) -> None:
  """Writes ``error: line`` to stderr and ends the process with status 1,
  without the interpreter's exit (which would wait on the blocked
  writer's threads)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  # On a line of its own: a progress bar may have left its line open.
  os.write(2, f"\nerror: {line}\n".encode())
  os._exit(1)  # pylint: disable=protected-access


def unanswered(what: str, timeout_s: float, last: Optional[int] = None,
               step: Optional[int] = None, stopped: bool = True) -> str:
  """The line for a write ``what`` ('checkpoint 6 could not be written to
  ...') still unfinished after ``timeout_s``: with ``stopped``, that
  training stopped (at ``step`` if given) and the last checkpoint
  (``last``, None: none); then the fix."""
  where = ""
  if stopped:
    at = f" at step {step}" if step is not None else ""
    where = (f"; training stopped{at}, the last checkpoint is "
             f"{'none' if last is None else f'step {last}'}")
  return (f"{what} within {timeout_s:.0f} s (the storage did not answer; "
          f"--config.training.storage_timeout_s){where}: fix the storage, "
          f"then run the same command to continue")


class Deadlines:
  """Time limits on writes in flight; ``timeout_s`` <= 0 sets none."""

  def __init__(self, timeout_s: float,
               expire: Callable[[str], None] = _exit_with):
    self.timeout_s = float(timeout_s)
    self._expire = expire
    self._lock = threading.Condition()
    self._due: Dict[Hashable, Tuple[float, Callable[[], str]]] = {}
    self._thread: Optional[threading.Thread] = None
    self._closed = False

  def arm(self, key: Hashable, message: Callable[[], str],
          timeout_s: Optional[float] = None) -> None:
    """Starts the clock of write ``key``; ``message()`` is the line (without
    'error: ') printed if it is still armed ``timeout_s`` (default: the
    object's) from now. It must not touch the storage."""
    if self.timeout_s <= 0:
      return
    limit = self.timeout_s if timeout_s is None else min(timeout_s,
                                                         self.timeout_s)
    with self._lock:
      self._due[key] = (time.monotonic() + limit, message)
      if self._thread is None:
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="write-deadlines")
        self._thread.start()
      self._lock.notify()

  def disarm(self, key: Hashable) -> None:
    """Write ``key`` has finished (or failed with an error of its own)."""
    with self._lock:
      self._due.pop(key, None)

  @contextlib.contextmanager
  def guard(self, key: Hashable, message: Callable[[], str]):
    """A context manager: ``key`` armed inside it."""
    self.arm(key, message)
    try:
      yield self
    finally:
      self.disarm(key)

  def close(self) -> None:
    """Stops the watching thread; no deadline fires after this."""
    with self._lock:
      self._closed = True
      self._due.clear()
      self._lock.notify()

  def _watch(self) -> None:
    with self._lock:
      while not self._closed:
        now = time.monotonic()
        late = [m for due, m in self._due.values() if due <= now]
        if late:
          break
        wait = min((due for due, _ in self._due.values()), default=None)
        self._lock.wait(None if wait is None else wait - now)
      else:
        return
    self._expire(late[0]())

