"""Progress from inside a sampler's ``lax.scan``: one 1000-step batch is
one call of a compiled program, so a bar over batches stands still for the
whole chain. With ``progress_every=K`` the chain calls back to the host
after every K-th step and after its last (``jax.debug.callback`` under a
``lax.cond``); the host moves the bar that :func:`reporting` set.

The callback only reads the step count: the samples are the same bits
with and without it (tested). It is a different program, so it is used
only where a person watches: bars shown (an entry point's) on a terminal
(:func:`every`); tests, pipes and benchmarks run the plain chain.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, List

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import progress

# At most this many callbacks per chain (at most one per step). Each is a
# device-to-host round trip, 0.18 ms on 2 CPU cores (docs/benchmarks.md,
# "In-scan progress"): 25 cost 4.4 ms per chain, under 1% of any chain
# that runs longer than 0.44 s; a 1000-step chain ticks every 40 steps.
TICKS = 25
# The host's listeners, newest last: each gets the count of steps done.
_LISTENERS: List[Callable[[int], None]] = []


def every(steps: int) -> int:
  """K for a chain of ``steps`` steps where progress is watched (bars
  shown on process 0, stderr a terminal), else 0: no callbacks."""
  if not (progress.shown() and sys.stderr.isatty()):
    return 0
  return max(1, -(-int(steps) // TICKS))


def tick(done: jax.Array, steps: int, progress_every: int) -> None:
  """Inside the scan: reports ``done`` (int32, steps finished) to the host
  when it is a multiple of ``progress_every`` or ``steps``."""
  due = (done % progress_every == 0) | (done == steps)
  jax.lax.cond(due, lambda d: jax.debug.callback(_report, d),
               lambda d: None, done)


def _report(done: np.ndarray) -> None:
  if _LISTENERS:
    _LISTENERS[-1](int(done))


@contextlib.contextmanager
def listening(fn: Callable[[int], None]) -> Iterator[None]:
  """While inside, the chains' ticks (steps done) go to ``fn``."""
  _LISTENERS.append(fn)
  try:
    yield
  finally:
    _LISTENERS.remove(fn)


@contextlib.contextmanager
def reporting(bar, base: int = 0) -> Iterator[None]:
  """While inside, a chain's ticks move the tqdm ``bar`` to ``base`` plus
  the steps done (``base``: the steps of the batches before)."""
  def move(done: int) -> None:
    bar.update(max(0, base + done - bar.n))
  with listening(move):
    yield


def with_positions(index: jax.Array, progress_every: int):
  """The scan's xs: ``index``, or (index, 1-based position) to tick."""
  if not progress_every:
    return index
  return index, jnp.arange(1, index.shape[0] + 1, dtype=jnp.int32)


def unpack(xs, steps: int, progress_every: int):
  """The step index of one scan element (from :func:`with_positions`);
  ticks its position if asked. (The callback depends on the position
  alone, so it may run while its step computes: at most one step early.)"""
  if not progress_every:
    return xs
  index, position = xs
  tick(position, steps, progress_every)
  return index


@contextlib.contextmanager
def chain_bar(desc: str, steps: int) -> Iterator[int]:
  """A bar saying ``desc`` while one chain of ``steps`` steps runs inside:
  yields the ``progress_every`` to give the chain (watched: a bar over its
  steps, moved from inside; else 0 and a bar of one chain). Fetch the
  chain's result inside, so that the bar ends with it."""
  k = every(steps)
  with progress.bar(total=steps if k else 1, desc=desc,
                    unit="step" if k else "chain") as bar:
    with reporting(bar):
      yield k
    if not k:
      bar.update(1)
