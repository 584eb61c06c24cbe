"""Hugging Face Hub repo ids as ``--model`` takes them: which strings are
one, and where a Hub model's outputs go. Light to import (the flag checks
use it before JAX is loaded); the download is :mod:`.hub`'s."""

from __future__ import annotations

import os
import re

from ddpm_jax import paths

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")


def is_repo_id(model: str) -> bool:
  """Whether ``--model`` names a Hub repository: 'org/name', and no local
  path or URL of that name exists."""
  return (bool(_REPO_ID.fullmatch(model)) and not paths.is_url(model) and
          not os.path.exists(model) and not model.endswith(".ckpt") and
          ".ckpt-" not in model)


def output_folder(repo_id: str) -> str:
  """The local folder a Hub model's outputs go under by default (not the
  cache): ``org--name`` in the current directory."""
  return repo_id.replace("/", "--")
