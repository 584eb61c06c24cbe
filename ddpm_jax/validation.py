"""One check of a whole config against every registry: each rule is
written here once, and :func:`validate_config` raises
:class:`ddpm_jax.from_config.ConfigError` naming the first invalid field
and the fix."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple

import ml_collections

from ddpm_jax import losses
from ddpm_jax.diffusion import FIXED_VARIANCES, MEAN_ROUTES, PREDICTIONS
from ddpm_jax.from_config import (COMPUTE_DTYPES, ConfigError,
                                  objective_options)
from ddpm_jax.models.conv import UPSAMPLE_CONVS
from ddpm_jax.models.unet import ACTIVATIONS, ATTENTION_IMPLS, DROPOUT_RNGS
from ddpm_jax.samplers.registry import sampler_names
from ddpm_jax.schedules import beta_schedule_names
from ddpm_jax.samplers.spacing import SPACINGS


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """``config`` at a dotted path such as ``training.loss``."""
  for part in dotted.split("."):
    config = config[part]
  return config


def validate_config(config: ml_collections.ConfigDict,
                    flag_names: Optional[Mapping[str, str]] = None) -> None:
  """Raises :class:`ConfigError` naming the first invalid field.

  ``flag_names`` maps config fields to the command-line flags that set them
  (sample.py's ``--eta`` for ``sampling.eta``): the error then names the
  flag instead of ``--config.<field>``.
  """
  flag_names = flag_names or {}

  def arg(field: str) -> str:
    return flag_names.get(field, f"--config.{field}")

  classes = config.model.num_classes
  if classes > 0:
    label_want = f"-1 (every class in turn) or a class in [0, {classes})"
  elif config.sampling.classifier:
    label_want = "-1 or a class of the guiding classifier"
  else:
    label_want = (f"-1: the model is unconditional (model.num_classes=0); "
                  f"give {arg('sampling.classifier')} to guide it to a class")
  ddim_only = f"unless {arg('sampling.sampler')}=ddim"
  checks = [
      ("training.batch_size", config.training.batch_size > 0, "a positive int"),
      ("training.num_steps", config.training.num_steps > 0, "a positive int"),
      ("training.ema_decay", 0.0 <= config.training.ema_decay < 1.0,
       "in [0, 1)"),
      ("training.log_every", config.training.log_every > 0, "a positive int"),
      ("training.checkpoint_every", config.training.checkpoint_every > 0,
       "a positive int"),
      ("training.sample_every", config.training.sample_every >= 0,
       ">= 0 (0: only at the end)"),
      ("training.storage_timeout_s", config.training.storage_timeout_s >= 0,
       ">= 0 seconds (0: no limit)"),
      ("training.peak_tflops", config.training.peak_tflops >= 0,
       ">= 0 (0: from the device kind)"),
      ("optim.learning_rate", config.optim.learning_rate > 0, "positive"),
      ("optim.warmup_steps", config.optim.warmup_steps >= 0, ">= 0"),
      ("diffusion.num_timesteps", config.diffusion.num_timesteps > 0,
       "a positive int"),
      ("diffusion.schedule", config.diffusion.schedule in beta_schedule_names()
       or (config.diffusion.schedule == "custom" and
           bool(config.diffusion.betas)),
       f"one of {beta_schedule_names()}, or 'custom' with diffusion.betas"),
      ("sampling.variance", config.sampling.variance in FIXED_VARIANCES,
       f"one of {FIXED_VARIANCES}"),
      ("sampling.mean_from", config.sampling.mean_from in MEAN_ROUTES,
       f"one of {MEAN_ROUTES}"),
      ("sampling.num_samples", config.sampling.num_samples > 0,
       "a positive int"),
      ("model.num_classes", config.model.num_classes >= 0,
       ">= 0 (0: unconditional)"),
      ("sampling.label", config.sampling.label == -1 or (
          config.sampling.label >= 0 and (
              config.sampling.label < classes or
              bool(config.sampling.classifier))), label_want),
      ("sampling.guidance", config.sampling.guidance == 0 or
       classes > 0 or bool(config.sampling.classifier),
       f"0 unless model.num_classes > 0 (classifier-free guidance) or "
       f"{arg('sampling.classifier')} is set (classifier guidance)"),
      ("sampling.classifier", not (config.sampling.classifier and classes),
       f"'' for a class-conditional model (it takes classifier-free "
       f"guidance: use {arg('sampling.guidance')} alone)"),
      ("training.label_dropout",
       0 <= config.training.label_dropout < 1, "in [0, 1)"),
      ("training.steps_per_call",
       int(config.training.steps_per_call) >= 1,
       "a positive int (1: one step per call)"),
      ("training.microbatch_size",
       config.training.microbatch_size >= -1,
       "-1 (auto), 0 (each device's examples in one pass) or a positive "
       "int"),
      ("sampling.sampler", config.sampling.sampler in
       sampler_names(), f"one of {sampler_names()}"),
      ("sampling.steps", 0 <= config.sampling.steps <=
       config.diffusion.num_timesteps,
       f"0 (all) .. diffusion.num_timesteps="
       f"{config.diffusion.num_timesteps}"),
      ("sampling.spacing", config.sampling.spacing in
       SPACINGS, f"one of {SPACINGS}"),
      ("sampling.eta", config.sampling.eta >= 0 and (
          config.sampling.eta == 0 or
          config.sampling.sampler == "ddim"),
       f">= 0, and 0 {ddim_only} (a DDIM option)"),
      ("sampling.set_alpha_to_one", config.sampling.set_alpha_to_one or
       config.sampling.sampler == "ddim", f"True {ddim_only} (a DDIM option)"),
      ("sampling.rederive_eps", not config.sampling.rederive_eps or
       config.sampling.sampler == "ddim", f"False {ddim_only} (a DDIM option)"),
      ("sampling.batch_size", config.sampling.batch_size > 0, "a positive int"),
      ("training.quality_metric",
       config.training.quality_metric in ("digits", "fid")
       and (config.training.quality_metric == "fid" or
            not config.training.quality_every or
            config.data.name == "digits"),
       "'digits' (digits models only) or 'fid'"),
      ("training.quality_samples",
       config.training.quality_samples >= 2,
       "at least 2 (a covariance needs 2; FID protocols use 10k-50k)"),
      ("data.image_size", config.data.image_size > 0, "a positive int"),
      ("model.ch", config.model.ch > 0 and
       config.model.ch % config.model.num_groups == 0,
       f"a positive multiple of model.num_groups={config.model.num_groups}"),
      ("model.act", config.model.act in ACTIVATIONS,
       f"one of {sorted(ACTIVATIONS)}"),
      ("model.downsample_padding",
       config.model.downsample_padding in (0, 1), "0 or 1"),
      ("model.dropout_rng_impl",
       config.model.dropout_rng_impl in DROPOUT_RNGS,
       f"one of {DROPOUT_RNGS} (the generator of the dropout masks)"),
      ("model.upsample_conv",
       config.model.upsample_conv in UPSAMPLE_CONVS,
       f"one of {UPSAMPLE_CONVS} (how upsample-then-conv is computed)"),
      ("model.attention_impl",
       config.model.attention_impl in ATTENTION_IMPLS,
       f"one of {ATTENTION_IMPLS} (how attention is computed)"),
      ("model.dtype", config.model.dtype in COMPUTE_DTYPES,
       f"one of {COMPUTE_DTYPES} (the compute dtype; params stay float32)"),
  ]
  for field, ok, want in checks:
    if not ok:
      value = _field(config, field)
      name = (flag_names[field] if field in flag_names else
              f"config field {field}")
      raise ConfigError(f"{name}={value!r} is invalid: set {arg(field)} to "
                        f"{want}")
  head_dim = config.model.attn_head_dim
  widths = [config.model.ch * m for m in config.model.ch_mult]
  if head_dim is not None and (head_dim <= 0 or any(w % head_dim
                                                    for w in widths)):
    raise ConfigError(
        f"config field model.attn_head_dim={head_dim} is invalid: set "
        f"--config.model.attn_head_dim to a divisor of every block width "
        f"{widths}, or leave it unset for one head")
  _validate_objective(config)
  try:
    profile_steps(config.training.profile_steps)
  except ValueError:
    raise ConfigError(
        f"config field training.profile_steps="
        f"{config.training.profile_steps!r} is invalid: set "
        f"--config.training.profile_steps to 'START:END' (steps, 1 <= START "
        f"<= END), or '' for no profile") from None
  levels = len(config.model.ch_mult)
  if config.data.image_size % (2**(levels - 1)):
    raise ConfigError(
        f"config field data.image_size={config.data.image_size} must be "
        f"divisible by 2**(len(model.ch_mult) - 1) = {2**(levels - 1)}")


LEARNED_VARIANCES = ("", "learned", "learned_range")


def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """The prediction / variance / loss / weighting combination is one that
  trains: raises :class:`ConfigError` naming the field otherwise."""
  o = objective_options(config)
  learned = config.diffusion.learned_variance
  fields = [
      ("diffusion.prediction", o["prediction"], PREDICTIONS),
      ("diffusion.learned_variance", learned, LEARNED_VARIANCES),
      ("training.loss", o["loss_type"], losses.LOSS_TYPES),
      ("training.loss_weighting", o["weighting"], losses.WEIGHTINGS),
  ]
  for field, value, allowed in fields:
    if value not in allowed:
      raise ConfigError(f"config field {field}={value!r} is invalid: set "
                        f"--config.{field} to one of {allowed}")
  problems = [
      (o["loss_type"] == "hybrid" and not learned, "training.loss",
       "'hybrid' trains a learned variance: set diffusion.learned_variance "
       "to 'learned' or 'learned_range', or training.loss='mse'"),
      (o["loss_type"] == "mse" and bool(learned), "training.loss",
       "'mse' leaves the learned variance untrained: set training.loss to "
       "'hybrid' or 'kl', or diffusion.learned_variance=''"),
      (o["weighting"] != "none" and o["loss_type"] == "kl",
       "training.loss_weighting", "weights the mse and has no effect with "
       "training.loss='kl': set it to 'none'"),
      (o["weighting"] != "none" and o["prediction"] == "xprev",
       "training.loss_weighting", "is defined for the eps, x0 and v "
       "predictions: set it to 'none' with diffusion.prediction='xprev'"),
      (config.sampling.mean_from == "eps" and o["prediction"] != "eps",
       "sampling.mean_from", "'eps' (eq. 11) needs diffusion.prediction="
       "'eps': set it to 'x0'"),
  ]
  for bad, field, why in problems:
    if bad:
      raise ConfigError(f"config field {field}={_field(config, field)!r} "
                        f"{why}")


def profile_steps(spec: str) -> Optional[Tuple[int, int]]:
  """(START, END) of a ``training.profile_steps`` value 'START:END' (1 <=
  START <= END, the steps as the log numbers them); None for ''. Raises
  ValueError for anything else."""
  if not spec:
    return None
  m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
  if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
    raise ValueError(spec)
  return int(m.group(1)), int(m.group(2))
