"""Evaluation work shared over the processes of a multi-host job: each
process computes the features of its own block of the images, and the
blocks are gathered, in order, on every process."""

from __future__ import annotations

import sys
from typing import Callable, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils


def of_rows(fn: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
            what: str = "features") -> Tuple[np.ndarray, ...]:
  """``fn(x)`` (arrays with one row per row of ``x``), each process
  computing ``fn`` on its contiguous block of ``x``'s rows only (process i
  of p: rows i*ceil(n/p) on); the blocks are gathered on every process.
  One process: ``fn(x)`` as it is. The outputs are float32 values (as the
  networks compute them) returned as float64."""
  n, count, index = len(x), jax.process_count(), jax.process_index()
  if count == 1:
    return tuple(fn(x))
  per = -(-n // count)
  start, stop = min(index * per, n), min((index + 1) * per, n)
  print(f"process {index}: {what} of rows {start + 1}-{stop} of {n}",
        file=sys.stderr)
  if stop > start:
    mine = [np.asarray(o) for o in fn(x[start:stop])]
  else:  # (more processes than rows) the shapes alone
    mine = [np.asarray(o)[:0] for o in fn(x[:1])]
  out = []
  for o in mine:
    padded = np.zeros((per,) + o.shape[1:], np.float32)
    padded[:len(o)] = o
    gathered = np.asarray(multihost_utils.process_allgather(padded,
                                                            tiled=True))
    out.append(gathered[:n].astype(np.float64))
  return tuple(out)
