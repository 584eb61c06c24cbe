"""Self-conditioning (Chen et al. 2022, "Analog Bits"; lucidrains' package):
the network also sees an estimate of x_0 as extra input channels.

Training: on a random half of the steps the network first predicts x_0
with a zero estimate, and that prediction (gradient stopped) is fed back;
on the other half the estimate is zero. Sampling: each step passes the x_0
its previous step predicted (zero at the first step).

The model input is ``concat([x0_estimate, x_t], -1)`` (lucidrains' order),
so a self-conditioned U-Net has 2C input channels.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from ddpm_jax.diffusion import ApplyFn, p_mean_variance, q_sample
from ddpm_jax.losses import losses_from_output
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray


def conditioned_input(x_t: Array, x0_estimate: Optional[Array]) -> Array:
  """The model input: the x_0 estimate (zeros if None) before x_t."""
  if x0_estimate is None:
    x0_estimate = jnp.zeros_like(x_t)
  return jnp.concatenate([x0_estimate.astype(x_t.dtype), x_t], axis=-1)


def x0_estimate(schedule: DiffusionSchedule, model_output: Array,
                x_t: Array, t: Array, *, prediction: str,
                variance: str) -> Array:
  """The network's x_0 (unclipped), as fed back: its gradient stopped."""
  _, _, x0 = p_mean_variance(schedule, model_output, x_t, t,
                             prediction=prediction, variance=variance,
                             clip_denoised=False)
  return jax.lax.stop_gradient(x0)


def losses_with_estimate(params: Any, apply_fn: ApplyFn,
                         schedule: DiffusionSchedule, x0: Array, t: Array,
                         noise: Array, dropout_rng: Optional[Array],
                         use_estimate: Array, *, prediction: str = "eps",
                         variance: str = "fixedsmall", **options) -> Array:
  """The [B] losses when ``use_estimate`` (a boolean scalar) says whether
  the x_0 estimate of a first pass (zero estimate, its own dropout mask,
  gradient stopped) is fed back; else the estimate is zeros. ``options``
  as for :func:`ddpm_jax.losses.losses_from_output`."""
  x_t = q_sample(schedule, x0, t, noise)

  def estimate(_):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, 1)
    out = apply_fn(params, conditioned_input(x_t, None), t, rng)
    return x0_estimate(schedule, out.astype(jnp.float32), x_t, t,
                       prediction=prediction, variance=variance)

  sc = jax.lax.cond(use_estimate, estimate, lambda _: jnp.zeros_like(x_t),
                    None)
  out = apply_fn(params, conditioned_input(x_t, sc), t, dropout_rng)
  return losses_from_output(schedule, out, x0, t, noise, x_t=x_t,
                            prediction=prediction, variance=variance,
                            **options)


def loss_per_example(params: Any, apply_fn: ApplyFn,
                     schedule: DiffusionSchedule, x0: Array, t: Array,
                     noise: Array, dropout_rng: Optional[Array],
                     coin_key: Array, **options) -> Array:
  """The [B] losses of a self-conditioned network: with probability 1/2
  (one draw from ``coin_key`` per batch, as lucidrains draws one per
  batch) the estimate is fed back; see :func:`losses_with_estimate`."""
  use = jax.random.bernoulli(coin_key, 0.5)
  return losses_with_estimate(params, apply_fn, schedule, x0, t, noise,
                              dropout_rng, use, **options)
