"""The checks an entry point makes of its own flags before it imports JAX
or reads a checkpoint, so that a wrong count or path is refused within a
second, in one line (:func:`ddpm_jax.cli.fail`). Local paths only: a
bucket URL is checked where it is first read."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from ddpm_jax import cli
from ddpm_jax import paths


def count_error(num: int, batch_size: int) -> Optional[str]:
  """What is wrong with a sample count ``num`` and ``batch_size``, or None
  (both must be positive). The library functions raise it as a
  ``ValueError``; :func:`counts` refuses it as a flag."""
  if num <= 0:
    return f"--num must be positive, got {num}"
  if batch_size <= 0:
    return f"--batch_size must be positive, got {batch_size}"
  return None


def indices_error(indices: Sequence[int]) -> Optional[str]:
  """What is wrong with held-out image indices (``--partial``), or None."""
  if not indices or min(indices) < 0:
    return "give image indices >= 0, e.g. --partial=0,1,2"
  return None


def interpolation_error(pair: Sequence[int],
                        num_lambdas: int) -> Optional[str]:
  """What is wrong with ``--interpolate`` and ``--lambdas``, or None."""
  if len(pair) != 2:
    return f"--interpolate takes two image indices I,J, got {list(pair)}"
  if num_lambdas < 2:
    return f"--lambdas must be >= 2, got {num_lambdas}"
  return indices_error(pair)


def counts(num: int, batch_size: int) -> None:
  """``--num`` and ``--batch_size`` positive (:func:`count_error`)."""
  _refuse(count_error(num, batch_size))


def batch_size(value: int) -> None:
  """``--batch_size`` positive, for an entry point whose ``--num`` has
  another meaning."""
  _refuse(count_error(1, value))


def partial(indices: Sequence[int]) -> None:
  """``--partial``'s indices (:func:`indices_error`)."""
  _refuse(indices_error(indices))


def interpolation(pair: Sequence[int], num_lambdas: int) -> None:
  """``--interpolate`` and ``--lambdas`` (:func:`interpolation_error`)."""
  _refuse(interpolation_error(pair, num_lambdas))


def _refuse(error: Optional[str]) -> None:
  if error is not None:
    cli.fail(error)


def trained_workdir(workdir: Optional[str]) -> None:
  """``--workdir`` (when given) is a local folder that exists, or a URL."""
  if workdir is None or paths.is_url(workdir):
    return
  if not os.path.exists(workdir):
    cli.fail(f"--workdir {workdir} does not exist: give the workdir of a "
             f"train.py run")
  if not os.path.isdir(workdir):
    cli.fail(f"--workdir {workdir} is a file, not a folder: give the "
             f"workdir of a train.py run")


def new_workdir(workdir: str) -> None:
  """train.py's ``--workdir``: a folder, or a path where one can be made,
  where files can be written (:func:`ddpm_jax.paths.check_writable_folder`:
  not a file, nor under one)."""
  _writable(workdir, "--workdir")


def out_folder(out: Optional[str], default_folder: Optional[str]) -> None:
  """The folder of ``--out`` (or ``default_folder`` without it, when
  known) can be written (:func:`ddpm_jax.paths.check_writable_folder`)."""
  folder = paths.dirname(out) if out else default_folder
  if folder is not None:
    _writable(folder or ".", "--out")


def _writable(folder: str, flag: str) -> None:
  try:
    paths.check_writable_folder(folder, flag)
  except paths.StorageError as e:
    cli.fail(str(e))
