"""The TensorBoard writer of a training run, for a local workdir or a URL
(``gs://...``): events go through :mod:`ddpm_jax.paths` either way."""

from __future__ import annotations

import io
import sys

from ddpm_jax import paths

EVENTS_DIR = "tensorboard"


# The size at which an event object at a URL is closed: the events then go
# on in the next object (``<name>.part00001``, ...), so that a flush
# rewrites the newest part, not everything logged since the start.
PART_BYTES = 256 * 1024


class _ObjectEvents:
  """An event file at a URL. An object store cannot append, so the newest
  part is kept in memory and written whole at each flush (as
  tensorboardX's own GCS writer does with the whole file). A part ends at
  a flush (between whole records: tensorboardX writes a record in several
  calls) once it holds PART_BYTES; TensorBoard reads a run's files in name
  order."""

  def __init__(self, path: str):
    self._path = path
    self._part = 0
    self._buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    if self._part and not self._buffer.tell():
      return  # a new part with nothing in it yet: no empty object
    name = (self._path if self._part == 0 else
            f"{self._path}.part{self._part:05d}")
    paths.write_bytes(name, self._buffer.getvalue())
    if self._buffer.tell() >= PART_BYTES:
      self._part += 1
      self._buffer = io.BytesIO()

  def close(self) -> None:
    self.flush()


class _ObjectEventsFactory:
  """tensorboardX's writer factory for one URL scheme."""

  def open(self, path: str) -> _ObjectEvents:
    return _ObjectEvents(path)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


def summary_writer(workdir: str):
  """A TensorBoard writer for ``workdir/tensorboard``, or None without
  tensorboardX."""
  # tensorboardX imports torch, when installed, only to accept its tensors
  # (a measurable cost at every start; docs/benchmarks.md, 'Measurements
  # behind design choices'); this writer is given Python floats, so torch
  # is hidden while it loads.
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    # pylint: disable=g-import-not-at-top
    from tensorboardX import SummaryWriter
    from tensorboardX import record_writer
  except ImportError:
    return None
  finally:
    if hide:
      del sys.modules["torch"]
  logdir = paths.join(workdir, EVENTS_DIR)
  if paths.is_url(logdir):
    # In place of tensorboardX's own gs:// writer, which needs another
    # client and does not reach a storage emulator.
    record_writer.register_writer_factory(logdir.split("://")[0],
                                          _ObjectEventsFactory())
  return SummaryWriter(logdir)
