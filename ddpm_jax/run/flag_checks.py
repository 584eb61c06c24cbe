"""The checks an entry point makes of its own flags before it imports JAX
or reads a checkpoint, so that a wrong count or path is refused within a
second, in one line (:func:`ddpm_jax.cli.fail`). Local paths only: a
bucket URL is checked where it is first read."""

from __future__ import annotations

import os
from typing import Optional

from ddpm_jax import cli
from ddpm_jax import paths


def counts(num: int, batch_size: int, num_flag: str = "--num") -> None:
  """``num`` and ``batch_size`` positive."""
  if num <= 0:
    cli.fail(f"{num_flag} must be positive, got {num}")
  if batch_size <= 0:
    cli.fail(f"--batch_size must be positive, got {batch_size}")


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
