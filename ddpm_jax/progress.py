"""Progress bars for the loops that can run long (sampling, bits/dim,
Inception features, classifier training): shown once a command-line entry
point calls :func:`enable` (``ddpm_jax.cli.run`` does), on process 0 only;
silent in library use."""

from __future__ import annotations

import sys
from typing import Iterable, Optional

import jax
from tqdm import tqdm

_ENABLED = [False]


def enable(on: bool = True) -> None:
  """Shows (or hides) the bars from now on."""
  _ENABLED[0] = on


def shown() -> bool:
  """Whether bars are shown here: enabled, and this is process 0."""
  return _ENABLED[0] and jax.process_index() == 0


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None,
        desc: str, unit: str) -> tqdm:
  """A tqdm bar over ``iterable`` (or updated by hand), on stderr; a no-op
  unless enabled, and on processes other than 0."""
  return tqdm(iterable, total=total, desc=desc, unit=unit,
              disable=not shown(),
              dynamic_ncols=True)


def log_line(progress: tqdm, text: str) -> None:
  """``text`` as a line of stdout above the bar ``progress``, flushed at
  once: a log read through a pipe (a pod's log collector, ``| tee``) shows
  each line when it happens, not when a buffer of them fills."""
  progress.write(text)
  sys.stdout.flush()
