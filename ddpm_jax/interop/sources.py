"""One entry point for every model source sample.py and export accept:
a train.py workdir, a diffusers model directory, an original TF checkpoint."""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple

import jax
import ml_collections
import numpy as np

from configs import default
from ddpm_jax import checkpoint_digests, checkpoints, from_config, paths
from ddpm_jax.interop import ConversionError
from ddpm_jax.interop import diffusers_scheduler
from ddpm_jax.interop import diffusers_unet
from ddpm_jax.interop import hub, repo_ids
from ddpm_jax.interop import tf_checkpoint
from ddpm_jax.train.state import train_state_shapes


def _base_config() -> ml_collections.ConfigDict:
  return default.get_default_config()


def load_workdir(workdir: str, use_ema: bool = True
                 ) -> Tuple[ml_collections.ConfigDict, Any, int]:
  """A train.py workdir -> (its config, the latest checkpoint's EMA (or raw)
  params, that checkpoint's step). Only those params and the step are read
  from the checkpoint, and checked against their digests."""
  paths.check_reachable(workdir)
  if not paths.isfile(paths.join(workdir, checkpoints.CONFIG_FILE)):
    raise FileNotFoundError(
        f"{workdir!r} has no {checkpoints.CONFIG_FILE}: pass the --workdir of "
        f"a train.py run")
  config = checkpoints.read_config(workdir)
  manager = checkpoints.checkpoint_manager(workdir, read_only=True)
  try:
    if manager.latest_step() is None:
      raise FileNotFoundError(
          f"{workdir!r} has no checkpoint yet: train first (train.py "
          f"--workdir {workdir}) or pass another --workdir")
    model = from_config.make_model(config)
    tx = from_config.make_optimizer(config)
    # Only the step and the parameters used are read (and checked), not
    # the optimizer state or the other parameters.
    field = "ema_params" if use_ema else "params"
    state = checkpoints.restore_latest(
        manager, train_state_shapes(config, model, tx),
        fields=("step", field)).state
  finally:
    manager.close()
  return config, state[field], int(state["step"])


def _scheduler_file(path: str) -> Optional[str]:
  for d in (path, paths.join(path, "scheduler")):
    f = paths.join(d, diffusers_scheduler.SCHEDULER_CONFIG_NAME)
    if paths.isfile(f):
      return f
  return None


def _with_model(config: ml_collections.ConfigDict,
                model_cfg: ml_collections.ConfigDict, image_size: int,
                channels: int) -> ml_collections.ConfigDict:
  config.model = model_cfg  # complete: the readers start from the defaults
  config.data.image_size = int(image_size)
  config.data.channels = int(channels)
  return config


def load_diffusers(path: str) -> Tuple[ml_collections.ConfigDict, Any, str]:
  """A diffusers model directory -> (full config, params, description).

  The schedule and sampler settings come from its ``scheduler_config.json``
  (or ``scheduler/scheduler_config.json``); without one, DDPMScheduler's
  defaults (linear 1e-4 to 0.02, T=1000, fixed_small, clipping) apply.
  """
  model_cfg, size, channels, params = diffusers_unet.read_model_dir(path)
  config = _with_model(_base_config(), model_cfg, size, channels)
  sched_file = _scheduler_file(path)
  sched = {}
  if sched_file is not None:
    try:
      sched = json.loads(paths.read_text(sched_file))
    except json.JSONDecodeError as e:
      raise ConversionError(f"{sched_file} is not valid JSON ({e.msg} at "
                            f"line {e.lineno})") from None
  settings = diffusers_scheduler.settings_from_scheduler_config(sched)
  out_ch = int(np.shape(params["conv_out"]["kernel"])[-1])
  learned = settings.diffusion.learned_variance
  if (out_ch == 2 * channels) != bool(learned):
    where = sched_file or "the default DDPMScheduler"
    raise ConversionError(
        f"{path}: the UNet has out_channels={out_ch} for in_channels="
        f"{channels} but {where} has variance_type="
        f"{sched.get('variance_type', 'fixed_small')!r}; a 2x-channel model "
        f"needs 'learned_range', a 1x one a fixed variance")
  config.diffusion.update(settings.diffusion)
  config.sampling.update(settings.sampling)
  return config, params, f"diffusers model {path}"


def load_tf(path: str, image_size: Optional[int], use_ema: bool = True
            ) -> Tuple[ml_collections.ConfigDict, Any, str]:
  """An original TF checkpoint -> (full config, params, description), with
  the paper's schedule (linear 1e-4 to 0.02, T=1000)."""
  if not image_size:
    raise ConversionError("a TF checkpoint does not record its image size: "
                          "pass --image_size (32 for CIFAR-10, 256 for "
                          "CelebA-HQ and LSUN)")
  model_cfg, channels, params, used_ema = tf_checkpoint.read_tf_checkpoint(
      path, image_size, prefer_ema=use_ema)
  diffusers_unet.refuse_nonfinite(
      {checkpoint_digests.leaf_name(name): np.asarray(leaf)
       for name, leaf in jax.tree_util.tree_leaves_with_path(params)}, path)
  config = _with_model(_base_config(), model_cfg, image_size, channels)
  which = "EMA" if used_ema else "raw"
  return config, params, f"TF checkpoint {path} ({which} weights)"


def load_model(path: str, image_size: Optional[int] = None,
               use_ema: bool = True, revision: Optional[str] = None
               ) -> Tuple[ml_collections.ConfigDict, Any, str]:
  """A diffusers model directory, a Hub repo id (fetched at ``revision``,
  :mod:`ddpm_jax.interop.hub`) or an original TF checkpoint -> (config
  with model, data, diffusion and sampling set; params; a description for
  messages)."""
  if repo_ids.is_repo_id(path):
    return load_diffusers(hub.fetch(path, revision))
  paths.check_reachable(path)
  if diffusers_unet.find_model_dir(path) is not None:
    return load_diffusers(path)
  if tf_checkpoint.is_tf_checkpoint(path):
    return load_tf(path, image_size, use_ema)
  if not paths.exists(path) and not paths.exists(path + ".index"):
    raise FileNotFoundError(f"--model {path} does not exist")
  raise ConversionError(f"{path} is neither a diffusers model directory "
                        f"(config.json + {diffusers_unet.WEIGHTS_NAME}) nor a "
                        f"TF checkpoint (model.ckpt-NNNN.index)")
