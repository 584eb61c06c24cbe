"""Orbax checkpoints of the train state, and the run's saved config."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, max_to_keep: int = 3,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over ``workdir/checkpoints``."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` (a pytree) as ``step`` (asynchronously)."""
  manager.save(step, args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager,
                   template: Any) -> Optional[Any]:
  """The latest checkpoint restored onto ``template``'s structure, or None."""
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(template))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config as JSON (for sample.py and for the record)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote into ``workdir``."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
