"""What every input stream shares: its :class:`Position`, the error a
dataset raises, and each process's share of a global batch."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Optional, Tuple, TypeVar

import jax
import numpy as np


class DataError(ValueError):
  """A dataset cannot be read; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class Position:
  """Where an input stream stands: ``offset`` examples of ``epoch`` (counted
  over all processes) have been consumed. Saved with each checkpoint, so a
  resumed run reads on from exactly there, even with another batch size."""
  epoch: int = 0
  offset: int = 0

  def to_json(self) -> Dict[str, int]:
    return {"epoch": int(self.epoch), "offset": int(self.offset)}

  @classmethod
  def from_json(cls, d: Any) -> "Position":
    """The position saved as ``d`` (:meth:`to_json`); :class:`DataError`
    unless it holds exactly two whole numbers >= 0."""
    fields = ("epoch", "offset")
    if not (isinstance(d, dict) and sorted(d) == sorted(fields) and all(
        isinstance(d[k], int) and not isinstance(d[k], bool) and d[k] >= 0
        for k in fields)):
      raise DataError(f"the saved input position {str(d)[:100]} is not "
                      f"{{'epoch': E, 'offset': O}} with whole numbers >= 0")
    return cls(d["epoch"], d["offset"])

  def check_within(self, examples: int) -> None:
    """:class:`DataError` if the offset lies beyond an epoch of
    ``examples`` (counted over all processes): no save puts it there, so
    the position is damaged or the data changed since."""
    if self.offset > examples:
      raise DataError(f"the saved input position (epoch {self.epoch}, "
                      f"offset {self.offset}) lies beyond the dataset's "
                      f"{examples} examples: the checkpoint's input position "
                      f"is damaged or the dataset changed since it was saved")


# (local batch, position after it): what every input iterator yields.
Batches = Iterator[Tuple[np.ndarray, Position]]


def process_share(process_index: Optional[int], process_count: Optional[int]
                  ) -> Tuple[int, int]:
  """(index, count) of this process: as given, or JAX's when either is
  None."""
  if process_index is None or process_count is None:
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def local_batch_size(batch_size: int, process_count: int) -> int:
  """This process's share of a global batch of ``batch_size``."""
  if batch_size % process_count:
    raise DataError(f"training.batch_size {batch_size} is not divisible by "
                    f"the {process_count} processes: set a multiple")
  return batch_size // process_count


T = TypeVar("T")


class Sized(Iterator[T]):
  """An iterator with a known length (a progress bar over it has a
  total)."""

  def __init__(self, items: Iterator[T], length: int):
    self._items, self._length = items, int(length)

  def __iter__(self) -> Iterator[T]:
    return self

  def __next__(self) -> T:
    return next(self._items)

  def __len__(self) -> int:
    return self._length
