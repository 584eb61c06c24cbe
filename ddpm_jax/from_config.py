"""The objects a config describes: the noise schedule, the U-Net, the
optimizer, and the options of the objective and the sampler.

Every module that needs one of these builds it here from the config, so no
module needs the trainer to get a schedule or a model. ``ConfigError`` is
the one-line error for an invalid field (see :mod:`ddpm_jax.validation`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddpm_jax.models.unet import UNet, unet_from_config
from ddpm_jax.schedules import DiffusionSchedule, betas_from_config
from ddpm_jax.schedules import make_schedule as make_schedule_from_betas


# model.dtype: the compute dtype of convolutions, dense layers and attention.
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and the fix."""


def make_betas(config: ml_collections.ConfigDict) -> np.ndarray:
  """The float64 betas of ``config.diffusion``."""
  d = config.diffusion
  return betas_from_config(d.schedule, d.num_timesteps, d.betas,
                           beta_start=d.beta_start,
                           beta_end=d.beta_end)


def make_schedule(config: ml_collections.ConfigDict) -> DiffusionSchedule:
  """The diffusion tables of ``config.diffusion``."""
  return make_schedule_from_betas(make_betas(config))


def model_variance(config: ml_collections.ConfigDict) -> str:
  """The variance of p_theta: the learned kind
  (``diffusion.learned_variance``) or else the fixed ``sampling.variance``."""
  return config.diffusion.learned_variance or \
      config.sampling.variance


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The class count of a class-conditional model (0: unconditional)."""
  return int(config.model.num_classes)


def self_conditioned(config: ml_collections.ConfigDict) -> bool:
  """Whether the U-Net takes an x_0 estimate as extra input channels."""
  return bool(config.model.self_condition)


def objective_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The keyword options of :func:`ddpm_jax.losses.losses_from_output` that
  ``config`` selects."""
  d, tr = config.diffusion, config.training
  return dict(prediction=d.prediction,
              variance=model_variance(config),
              loss_type=tr.loss,
              weighting=tr.loss_weighting,
              hybrid_lambda=float(tr.hybrid_lambda),
              min_snr_gamma=float(tr.min_snr_gamma),
              p2_gamma=float(tr.p2_gamma),
              p2_k=float(tr.p2_k))


def make_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of ``config.model`` for ``config.data``'s channel count (2x
  the channels out when the variance is learned)."""
  c = config.data.channels
  learned = bool(config.diffusion.learned_variance)
  return unet_from_config(config.model, c, 2 * c if learned else c)


def learning_rate_fn(config: ml_collections.ConfigDict):
  """step -> learning rate: lr * min(1, step / warmup), as the original."""
  o = config.optim
  warmup = max(int(o.warmup_steps), 0)

  def lr_schedule(step):
    if warmup == 0:
      return jnp.asarray(o.learning_rate, jnp.float32)
    return o.learning_rate * jnp.minimum(1.0, step / warmup)

  return lr_schedule


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam with linear warmup (:func:`learning_rate_fn`) after clipping the
  gradient's global norm."""
  o = config.optim
  lr_schedule = learning_rate_fn(config)
  chain = []
  if o.grad_clip and o.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  chain.append(optax.adam(lr_schedule, b1=o.beta1, b2=o.beta2, eps=o.eps))
  return optax.chain(*chain)


def sampler_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The keyword options of the ``config.sampling.sampler`` sampler
  (:mod:`ddpm_jax.samplers`)."""
  s = config.sampling
  options = dict(steps=int(s.steps) or None,
                 spacing_name=s.spacing,
                 clip_denoised=bool(s.clip_denoised),
                 variance=model_variance(config),
                 prediction=config.diffusion.prediction,
                 self_condition=self_conditioned(config),
                 mean_from=s.mean_from)
  if s.sampler == "ddim":
    options["eta"] = float(s.eta)
    options["set_alpha_to_one"] = bool(s.set_alpha_to_one)
    options["rederive_eps"] = bool(s.rederive_eps)
    del options["mean_from"]
  return options


def sample_labels(config: ml_collections.ConfigDict, offset: int,
                  batch: int, classes: Optional[int] = None) -> np.ndarray:
  """The classes of samples offset .. offset + batch - 1: all
  ``sampling.label``, or (-1) sample j gets j mod ``classes`` (default
  model.num_classes)."""
  label = int(config.sampling.label)
  if label >= 0:
    return np.full((batch,), label, np.int32)
  classes = classes or num_classes(config)
  return ((offset + np.arange(batch)) % classes).astype(np.int32)
