"""Evaluation work shared over the processes of a multi-host job: each
process computes the features of its own block of the images, and the
blocks are gathered, in order, on every process."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils


def say(what: str) -> None:
  """``what`` this process computed, on stderr as "process i: ...", in a
  multi-host job only."""
  if jax.process_count() > 1:
    print(f"process {jax.process_index()}: {what}", file=sys.stderr)


def everywhere(flag: bool) -> bool:
  """Whether ``flag`` holds on every process of the job (each passes its
  own), so that all take the same branch around a collective: e.g. a
  cache that one host has and another lacks is computed again by all."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([bool(flag)]))
  return bool(np.all(flags))


def local_rows(x: jax.Array, n: int) -> int:
  """How many of the first ``n`` rows of the global array ``x`` (its first
  axis split over devices) this process's devices hold."""
  rows = set()
  for shard in x.addressable_shards:
    rows.update(range(*shard.index[0].indices(x.shape[0])))
  return sum(1 for r in rows if r < n)


def block(n: int) -> Tuple[int, int]:
  """(start, stop): this process's contiguous block of ``n`` rows (process
  i of p: rows i*ceil(n/p) on; empty past the end)."""
  per = -(-n // jax.process_count())
  index = jax.process_index()
  return min(index * per, n), min((index + 1) * per, n)


def of_rows(fn: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
            what: Optional[str] = "features") -> Tuple[np.ndarray, ...]:
  """``fn(x)`` (arrays with one row per row of ``x``), each process
  computing ``fn`` on its :func:`block` of ``x``'s rows only (said on
  stderr as ``what``, unless None); the blocks are gathered on every
  process. One process: ``fn(x)`` as it is. The outputs are float32
  values (as the networks compute them) returned as float64."""
  n, count = len(x), jax.process_count()
  if count == 1:
    return tuple(fn(x))
  start, stop = block(n)
  if what is not None:
    say(f"{what} of rows {start + 1}-{stop} of {n}")
  if stop > start:
    mine = [np.asarray(o) for o in fn(x[start:stop])]
  else:  # (more processes than rows) the shapes alone
    mine = [np.asarray(o)[:0] for o in fn(x[:1])]
  per = -(-n // count)
  out = []
  for o in mine:
    padded = np.zeros((per,) + o.shape[1:], np.float32)
    padded[:len(o)] = o
    gathered = np.asarray(multihost_utils.process_allgather(padded,
                                                            tiled=True))
    out.append(gathered[:n].astype(np.float64))
  return tuple(out)
