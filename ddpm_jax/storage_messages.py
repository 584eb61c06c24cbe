"""What the storage libraries (Orbax, TensorStore) say when a checkpoint's
save or restore fails, cut to one line: their messages without their
internals, and their log records and event-loop noise that repeat what
ddpm-jax reports itself."""

from __future__ import annotations

import logging
import re
import sys
import warnings

# Where a storage library's message turns to its internals (TensorStore
# appends a spec, a bound method's repr or source locations).
_INTERNALS = (" See full TensorStore details", " [source locations",
              " [tensorstore_spec", "<bound method")


class _ReportedElsewhere(logging.Filter):
  """Drops the storage libraries' log records about a checkpoint that
  ddpm-jax reports itself in one line (:mod:`ddpm_jax.checkpoints`):
  Orbax's 'Failed to get item metadata' warning for a damaged one, and
  asyncio's 'exception was never retrieved' for the TensorStore reads a
  failed restore leaves behind."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if message.startswith("Failed to get item metadata from directory"):
      return False
    if message.startswith(("Task exception was never retrieved",
                           "Future exception was never retrieved")):
      e = record.exc_info[1] if record.exc_info else None
      return "tensorstore" not in repr(e).lower()
    return True


def without_internals(text: str) -> str:
  """``text`` (a storage library's message) cut where its internals begin
  (TensorStore's spec, source locations, bound methods)."""
  for marker in _INTERNALS:
    text = text.split(marker, 1)[0]
  return text.strip().rstrip(".:;,")


def quiet_storage_noise() -> None:
  """Keeps the console to the one line that matters when a save or a
  restore fails. TensorStore completes the other reads or writes with
  callbacks into an event loop Orbax has already closed; each raises
  'Event loop is closed' into sys.unraisablehook (a workdir whose every
  checkpoint was truncated printed 7,000 lines of them), and the storage
  libraries log what ddpm-jax reports (:class:`_ReportedElsewhere`).
  Drops those, and only those, for the rest of the process."""
  # The writes a failed save abandons, reported at the interpreter's exit.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _ReportedElsewhere) for f in logger.filters):
      logger.addFilter(_ReportedElsewhere())
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def read_error(e: BaseException) -> str:
  """Why a checkpoint could not be read, in one short clause: the first
  line of the innermost error of ``e``'s chain (TensorStore's own, e.g.
  'Error reading "params.x/0.0" in OCDBT database at ...: ZSTD_decompress
  Stream() failed: Data corruption detected'), cut where the library's
  internals begin."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for error in reversed(chain):
    text = (str(error).strip().splitlines() or [""])[0]
    text = without_internals(text)
    # 'OUT_OF_RANGE: Error opening "cast" driver: Error opening "zarr"
    # driver: Error reading "a.b/.zarray" in OCDBT database at ...: Error
    # reading Byte range [0, 47029) of ...: Requested byte range [0, 47029)
    # is not valid for value of size 100': what was read, and why it failed.
    text = re.sub(r'^[A-Z_]+: ', "", text)
    text = re.sub(r'Error opening "[^"]*" driver: ', "", text)
    what = re.match(r'Error reading "[^"]*"', text)
    if what and ": " in text[what.end():]:
      text = f"{what.group(0)}: {text.rsplit(': ', 1)[-1]}"
    if text:
      return text[:240]
  return type(chain[0]).__name__
