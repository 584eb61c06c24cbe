"""What sample.py does: restore a workdir's checkpoint and write samples."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ddpm_jax import images, training
from ddpm_jax.diffusion import FIXED_VARIANCES as VARIANCES
from ddpm_jax.interop import sources

def _check_counts(num: int, batch_size: int) -> None:
  if num <= 0:
    raise ValueError(f"--num must be positive, got {num}")
  if batch_size <= 0:
    raise ValueError(f"--batch_size must be positive, got {batch_size}")


def _apply_overrides(config, variance: Optional[str],
                     sampler: Optional[Dict[str, Any]] = None) -> None:
  for key, value in (sampler or {}).items():
    config.sampling[key] = value
  s = config.sampling
  if s.get("eta", 0.0) and s.get("sampler", "ddpm") != "ddim":
    raise ValueError("--eta is a DDIM option: add --sampler=ddim")
  if not 0 <= s.get("steps", 0) <= config.diffusion.num_timesteps:
    raise ValueError(f"--steps must be in [0, {config.diffusion.num_timesteps}]"
                     f" (0: all), got {s.steps}")
  if variance:
    if variance not in VARIANCES:
      raise ValueError(f"--variance must be one of {VARIANCES}, got "
                       f"{variance!r}")
    learned = config.diffusion.get("learned_variance", "")
    if learned:
      raise ValueError(f"--variance {variance} would replace this model's "
                       f"learned variance ({learned}): drop --variance")
    config.sampling.variance = variance


def _tag(config) -> str:
  """'' for the full ancestral chain, else e.g. '_ddim50_eta0.5'."""
  s = config.sampling
  name, steps = s.get("sampler", "ddpm"), s.get("steps", 0)
  if name == "ddpm" and steps in (0, config.diffusion.num_timesteps):
    return ""
  tag = f"_{name}{steps or config.diffusion.num_timesteps}"
  if s.get("eta", 0.0):
    tag += f"_eta{s.eta:g}"
  return tag


def _draw_and_write(config, params, num: int, batch_size: int, seed: int,
                    prefix: str) -> str:
  x = training.generate(config, training.make_model(config), params, num,
                        min(batch_size, num), seed)
  images.write_samples(prefix, x, images.display_scale(config.data.image_size))
  return prefix


def sample_from_workdir(workdir: str, num: int, batch_size: int, seed: int,
                        out: Optional[str] = None,
                        use_ema: bool = True,
                        variance: Optional[str] = None,
                        sampler: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``num`` samples of ``workdir``'s latest checkpoint; returns the
  output prefix (``.png`` and ``.npz`` are appended). ``sampler`` overrides
  ``config.sampling`` fields (sampler, steps, eta, spacing)."""
  _check_counts(num, batch_size)
  config, params, step = sources.load_workdir(workdir, use_ema)
  _apply_overrides(config, variance, sampler)
  prefix = out or os.path.join(workdir, "samples",
                               f"sample_seed{seed}_step{step}{_tag(config)}")
  return _draw_and_write(config, params, num, batch_size, seed, prefix)


def sample_from_model(path: str, num: int, batch_size: int, seed: int,
                      out: Optional[str] = None, use_ema: bool = True,
                      image_size: Optional[int] = None,
                      variance: Optional[str] = None,
                      sampler: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``num`` samples of a diffusers model directory or an original
  TF checkpoint; returns the output prefix."""
  _check_counts(num, batch_size)
  config, params, _ = sources.load_model(path, image_size, use_ema)
  _apply_overrides(config, variance, sampler)
  name = os.path.basename(os.path.normpath(path)) or "model"
  prefix = out or os.path.join("samples",
                               f"{name}_seed{seed}{_tag(config)}")
  return _draw_and_write(config, params, num, batch_size, seed, prefix)
