"""The TensorBoard writer of a training run, for a local workdir or a URL
(``gs://...``): events go through :mod:`ddpm_jax.paths` either way."""

from __future__ import annotations

import struct
import sys
import threading
import time
from typing import Optional

from ddpm_jax import paths

EVENTS_DIR = "tensorboard"

# How often the training loop writes the scalars logged since the last
# write (and at the end).
FLUSH_SECS = 30.0


# The size at which an event object at a URL is closed: the events then go
# on in the next object (``<name>.part00001``, ...), so that a flush
# rewrites the newest part, not everything logged since the start.
PART_BYTES = 256 * 1024


class _ObjectEvents:
  """An event file at a URL. An object store cannot append, so the newest
  part is kept in memory and written whole at each flush (as
  tensorboardX's own GCS writer does with the whole file). A part is
  closed at a flush once its whole records hold PART_BYTES; TensorBoard
  reads a run's files in name order.

  tensorboardX writes a record in four calls from its logging thread and
  may flush from the caller's thread between them, so a part ends only at
  a record boundary (found from each record's length field) and a lock
  keeps the two threads apart."""

  def __init__(self, path: str):
    self._path = path
    self._part = 0
    self._buffer = bytearray()
    self._whole = 0  # bytes of the buffer that are whole records
    self._lock = threading.Lock()

  def _name(self) -> str:
    if self._part == 0:
      return self._path
    return f"{self._path}.part{self._part:05d}"

  def write(self, data: bytes) -> None:
    with self._lock:
      self._buffer += data

  def flush(self) -> None:
    with self._lock:
      # A TFRecord: length (8 bytes, little-endian), its CRC (4), the
      # data, the data's CRC (4).
      while len(self._buffer) - self._whole >= 8:
        (length,) = struct.unpack_from("<Q", self._buffer, self._whole)
        if self._whole + length + 16 > len(self._buffer):
          break
        self._whole += length + 16
      if self._whole >= PART_BYTES:  # close this part at a record's end
        paths.write_bytes(self._name(), bytes(self._buffer[:self._whole]))
        self._part += 1
        del self._buffer[:self._whole]
        self._whole = 0
      if self._buffer or not self._part:  # no empty object for a new part
        paths.write_bytes(self._name(), bytes(self._buffer))

  def close(self) -> None:
    self.flush()


class _ObjectEventsFactory:
  """tensorboardX's writer factory for one URL scheme."""

  def open(self, path: str) -> _ObjectEvents:
    return _ObjectEvents(path)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


class ScalarWriter:
  """TensorBoard scalars of a run, written in the caller's thread.

  tensorboardX's SummaryWriter writes from a thread of its own: a full disk
  or a storage outage there prints a traceback in that thread, and a
  writer whose thread died blocks once its queue fills. Here a failed write
  raises :class:`ddpm_jax.paths.StorageError` (naming the file and the
  cause) from :meth:`add_scalar` or :meth:`flush`, where the training loop
  turns it into one line."""

  def __init__(self, logdir: str, event_types):
    self._event_pb2, self._summary_pb2, events_writer = event_types
    self._path = paths.join(logdir, "events.out.tfevents.*")
    self._guard(_directory_check, logdir)
    self._events = self._guard(events_writer, paths.join(logdir, "events"))
    self._path = self._events._file_name  # pylint: disable=protected-access

  def _guard(self, fn, *args):
    try:
      return fn(*args)
    except Exception as e:  # pylint: disable=broad-except
      raise paths.StorageError(f"could not write TensorBoard events to "
                               f"{self._path} ({paths.cause(e)})") from e

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    """Adds ``tag`` = ``value`` at ``step`` (written at the next flush)."""
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
    event = self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                  summary=summary)
    self._guard(self._events.write_event, event)

  def flush(self) -> None:
    """Writes the scalars added so far to storage."""
    self._guard(self._events.flush)

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._guard(self._events.close)


def _directory_check(logdir: str) -> None:
  # Creates logdir through the writer factory of its URL scheme.
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.directory_check(logdir)


def summary_writer(workdir: str) -> Optional[ScalarWriter]:
  """A TensorBoard writer (:class:`ScalarWriter`) for
  ``workdir/tensorboard``, or None without tensorboardX."""
  # tensorboardX imports torch, when installed, only to accept its tensors
  # (a measurable cost at every start; docs/benchmarks.md, 'Measurements
  # behind design choices'); this writer is given Python floats, so torch
  # is hidden while it loads.
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
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
  return ScalarWriter(logdir, (event_pb2, summary_pb2, EventsWriter))
