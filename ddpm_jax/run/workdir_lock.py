"""One training run per workdir: a lock file that train.py's process 0
holds while it trains.

The lock is created atomically or not at all: a local file opened with
O_EXCL, and at a gs:// URL an object written with the does-not-exist
precondition (ifGenerationMatch=0), so of two runs started together exactly
one gets it. It records the holder's host, pid and start time. A second
run on the workdir refuses in one line naming the holder; a lock whose
holder ran on this host and is no longer running is taken over with a
warning, and ``--force_unlock`` takes over any lock (for a holder on
another host that is known to be gone).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

import fsspec

from ddpm_jax import paths

LOCK_FILE = "train.lock"


class WorkdirLocked(FileExistsError):
  """Another run holds the workdir's lock."""


def _create(path: str, data: bytes) -> bool:
  """Creates file ``path`` holding ``data`` if it does not exist; False if
  it does (atomically, locally and in a bucket)."""
  if paths.is_url(path):
    fs, target = fsspec.core.url_to_fs(path)
    try:
      fs.pipe_file(target, data, mode="create")
    except FileExistsError:
      return False
    except OSError as e:  # gcsfs: HTTP 412, precondition failed
      if "412" in str(e) or "recondition" in str(e):
        return False
      raise
    return True
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return True


def _read(path: str) -> Optional[Dict[str, Any]]:
  """The lock's holder, or None if the lock has gone meanwhile; a lock that
  cannot be parsed reads as an unknown holder."""
  try:
    text = paths.read_text(path)
  except FileNotFoundError:
    return None
  try:
    holder = json.loads(text)
    if isinstance(holder, dict):
      return holder
  except json.JSONDecodeError:
    pass
  return {"host": "?", "pid": "?", "started": "?"}


def _gone(holder: Dict[str, Any]) -> bool:
  """Whether the holder ran on this host and no process has its pid."""
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, TypeError, ValueError):
    return False
  return False


class WorkdirLock:
  """The held lock of one workdir; :meth:`release` gives it up."""

  def __init__(self, path: str, data: bytes):
    self.path, self._data = path, data

  def release(self) -> None:
    """Removes the lock, if it is still this run's. Raises
    :class:`ddpm_jax.paths.StorageError` if the storage fails."""
    try:
      if paths.read_bytes(self.path) == self._data:
        paths.remove(self.path)
    except FileNotFoundError:
      pass
    except Exception as e:  # pylint: disable=broad-except
      raise paths.storage_error(
          f"could not release the lock {self.path} (the next run takes it "
          f"over if it runs on this host, else give it --force_unlock)",
          e) from e


def acquire(workdir: str, force: bool = False) -> WorkdirLock:
  """Takes ``workdir``'s lock for this process, or raises
  :class:`WorkdirLocked` (one line naming the holder and the fix)."""
  path = paths.join(workdir, LOCK_FILE)
  data = json.dumps({
      "host": socket.gethostname(), "pid": os.getpid(),
      "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
      "command": " ".join(sys.argv)[:300]}).encode("utf-8")
  for _ in range(3):
    if _create(path, data):
      return WorkdirLock(path, data)
    holder = _read(path)
    if holder is None:  # released meanwhile: try again
      continue
    who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
           f"{holder.get('started')}")
    if not (force or _gone(holder)):
      raise WorkdirLocked(
          f"{workdir} is being trained by {who} (lock {path}): stop that "
          f"run first; if it is no longer running, run again with "
          f"--force_unlock")
    why = "--force_unlock" if force else "that process no longer runs"
    print(f"warning: taking over the lock of {workdir} from {who} ({why})",
          file=sys.stderr)
    try:
      paths.remove(path)
    except FileNotFoundError:
      pass
  raise WorkdirLocked(f"{workdir}: could not take the lock {path}, which "
                      f"other runs keep taking: stop them first")
