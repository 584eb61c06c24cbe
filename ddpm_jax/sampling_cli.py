"""What sample.py does: restore a workdir's checkpoint and write samples."""

from __future__ import annotations

import os
from typing import Optional

from ddpm_jax import checkpoints, images, training


def sample_from_workdir(workdir: str, num: int, batch_size: int, seed: int,
                        out: Optional[str] = None,
                        use_ema: bool = True) -> str:
  """Writes ``num`` samples of ``workdir``'s latest checkpoint; returns the
  output prefix (``.png`` and ``.npz`` are appended)."""
  if num <= 0:
    raise ValueError(f"--num must be positive, got {num}")
  if batch_size <= 0:
    raise ValueError(f"--batch_size must be positive, got {batch_size}")
  if not os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE)):
    raise FileNotFoundError(
        f"{workdir!r} has no {checkpoints.CONFIG_FILE}: pass the --workdir of "
        f"a train.py run")
  config = checkpoints.read_config(workdir)
  manager = checkpoints.checkpoint_manager(workdir, read_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(
        f"{workdir!r} has no checkpoint yet: train first (train.py --workdir "
        f"{workdir}) or pass another --workdir")
  model, tx = training.make_model(config), training.make_optimizer(config)
  state = checkpoints.restore_latest(
      manager, training.create_train_state(config, model, tx))
  manager.close()
  params = state.ema_params if use_ema else state.params
  step = int(state.step)
  x = training.generate(config, model, params, training.make_schedule(config),
                        num, min(batch_size, num), seed)
  prefix = out or os.path.join(workdir, "samples",
                               f"sample_seed{seed}_step{step}")
  images.write_samples(prefix, x, images.display_scale(config.data.image_size))
  return prefix
