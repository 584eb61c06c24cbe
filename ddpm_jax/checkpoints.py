"""Orbax checkpoints of the train state, and the run's saved config.

A checkpoint holds the step, params, EMA params and optimizer state. The
rest of a run's position is a function of the step: the per-step rng is
``fold_in(PRNGKey(seed), step)`` and the input order depends only on
(seed, step), so restoring the state at step s resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import sys
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


def restore_latest(manager: ocp.CheckpointManager, template: Any,
                   set_aside: bool = False) -> Optional[Any]:
  """The newest readable checkpoint restored onto ``template`` (whose
  arrays' shardings it takes, whatever mesh wrote it), or None if there is
  none.

  A newest checkpoint that fails to restore while an older one succeeds is
  taken to be damaged (a truncated write): a message names it, and with
  ``set_aside`` its directory is moved to ``checkpoints_unreadable/`` next
  to ``checkpoints/`` (kept, never deleted) so that training can save that
  step again. If no checkpoint restores, the newest one's error is raised
  and nothing is moved: a config that no longer matches the checkpoints is
  not mistaken for damage.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as e:  # pylint: disable=broad-except
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      failures.append((step, reason, e))
      continue
    for bad, reason, _ in failures:
      where = ""
      if set_aside:
        where = f"; moved it to {_set_aside(manager, bad)}"
      print(f"warning: checkpoint {bad} is unreadable ({reason[:200]})"
            f"{where}; using checkpoint {step}", file=sys.stderr)
    if failures and set_aside:
      manager.reload()
    return restored
  if failures:
    step, reason, e = failures[0]
    raise ValueError(f"checkpoint {step} in {manager.directory} cannot be "
                     f"restored: {reason[:300]}") from e
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  src = os.path.join(str(manager.directory), str(step))
  dest_dir = os.path.join(os.path.dirname(str(manager.directory)),
                          "checkpoints_unreadable")
  os.makedirs(dest_dir, exist_ok=True)
  dest = os.path.join(dest_dir, f"{step}")
  n = 1
  while os.path.exists(dest):
    dest = os.path.join(dest_dir, f"{step}.{n}")
    n += 1
  shutil.move(src, dest)
  return dest


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
