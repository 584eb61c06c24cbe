"""Training objectives beyond L_simple: the true bound's terms (eq. 5), the
hybrid loss of improved DDPM, and per-timestep loss weightings.

Every loss here is per example (shape [B]); callers take the mean. The
network's output is passed in, so the functions are pure and testable
with injected outputs; :func:`loss_per_example` composes them with a
model.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from ddpm_jax import likelihood
from ddpm_jax.diffusion import (ApplyFn, p_mean_variance,
                                q_mean_variance, q_posterior_mean_variance,
                                q_sample, split_model_output, training_target)
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray

# mse: ||target - output||^2 (L_simple for eps); kl: the bound's term L_t
# (eq. 5) in bits; hybrid: mse + lambda * L_t with the mean's gradient
# stopped in L_t (improved DDPM; trains a learned variance).
LOSS_TYPES = ("mse", "kl", "hybrid")
# Per-timestep weights of the mse: none (the original code's plain MSE on
# the target); eps_equivalent (the MSE in eps units: 1, SNR, SNR / (SNR + 1)
# for eps, x0, v; lucidrains' default); min_snr (min(SNR, gamma) in place
# of SNR in eps_equivalent; Hang et al. 2023); p2 (eps_equivalent times
# (k + SNR)^-gamma; Choi et al. 2022).
WEIGHTINGS = ("none", "eps_equivalent", "min_snr", "p2")


def loss_weight(weighting: str, prediction: str, schedule: DiffusionSchedule,
                t: Array, *, min_snr_gamma: float = 5.0,
                p2_gamma: float = 1.0, p2_k: float = 1.0) -> Array:
  """The [B] weights of the per-example mse at timesteps ``t``."""
  snr = schedule.snr[t]
  if weighting == "none":
    return jnp.ones_like(snr)
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of "
                     f"{WEIGHTINGS}")
  signal = jnp.minimum(snr, min_snr_gamma) if weighting == "min_snr" else snr
  if prediction == "eps":
    weight = signal / snr
  elif prediction == "x0":
    weight = signal
  elif prediction == "v":
    weight = signal / (snr + 1.0)
  else:
    raise ValueError(f"loss weighting {weighting!r} is defined for the eps, "
                     f"x0 and v predictions, not {prediction!r}")
  if weighting == "p2":
    weight = weight * (p2_k + snr)**(-p2_gamma)
  return weight


def vlb_terms(schedule: DiffusionSchedule, model_output: Array, x0: Array,
              x_t: Array, t: Array, *, prediction: str = "eps",
              variance: str = "fixedsmall", clip_denoised: bool = False,
              log_floor: float = likelihood.LOG_FLOOR) -> Array:
  """The bound's term at each example's t, in bits per dimension: for
  t > 0, L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t));
  at t = 0, the decoder's -log p_theta(x_0 | x_1) (eq. 13)."""
  true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, t)
  mean, log_var, _ = p_mean_variance(
      schedule, model_output, x_t, t, prediction=prediction,
      variance=variance, clip_denoised=clip_denoised)
  kl = likelihood.mean_flat_bits(
      likelihood.normal_kl(true_mean, true_log_var, mean, log_var))
  nll = -likelihood.mean_flat_bits(
      likelihood.discretized_gaussian_log_likelihood(
          x0, mean, 0.5 * log_var, log_floor=log_floor))
  return jnp.where(jnp.asarray(t) == 0, nll, kl)


def prior_bpd(schedule: DiffusionSchedule, x0: Array) -> Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example
  (no parameters; near 0 for a good schedule)."""
  t_last = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
  mean, _, log_var = q_mean_variance(schedule, x0, t_last)
  return likelihood.mean_flat_bits(
      likelihood.normal_kl(mean, log_var, jnp.zeros_like(mean),
                           jnp.zeros_like(log_var)))


def losses_from_output(schedule: DiffusionSchedule, model_output: Array,
                       x0: Array, t: Array, noise: Array, *,
                       prediction: str = "eps", variance: str = "fixedsmall",
                       loss_type: str = "mse", weighting: str = "none",
                       hybrid_lambda: float = 1e-3,
                       min_snr_gamma: float = 5.0, p2_gamma: float = 1.0,
                       p2_k: float = 1.0,
                       log_floor: float = likelihood.LOG_FLOOR,
                       x_t: Optional[Array] = None) -> Array:
  """The [B] training losses given the network's output at x_t =
  q_sample(x0, t, noise). ``log_floor`` is the decoder's probability floor
  (see :func:`likelihood.discretized_gaussian_log_likelihood`); ``x_t``
  may be passed when the caller already has it."""
  if x_t is None:
    x_t = q_sample(schedule, x0, t, noise)
  model_output = model_output.astype(jnp.float32)
  if loss_type == "kl":
    return vlb_terms(schedule, model_output, x0, x_t, t,
                     prediction=prediction, variance=variance,
                     log_floor=log_floor)
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss type {loss_type!r}; choose one of "
                     f"{LOSS_TYPES}")
  mean_out, var_out = split_model_output(model_output, variance)
  target = training_target(prediction, schedule, x0, x_t, t, noise)
  mse = jnp.mean(jnp.square(target - mean_out),
                 axis=tuple(range(1, x0.ndim)))
  mse = mse * loss_weight(weighting, prediction, schedule, t,
                          min_snr_gamma=min_snr_gamma, p2_gamma=p2_gamma,
                          p2_k=p2_k)
  if loss_type == "mse":
    return mse
  if var_out is None:
    raise ValueError("the hybrid loss trains a learned variance: set the "
                     "variance to 'learned' or 'learned_range'")
  # The bound term trains only the variance: the mean's gradient is stopped.
  frozen = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_out], -1)
  vb = vlb_terms(schedule, frozen, x0, x_t, t, prediction=prediction,
                 variance=variance, log_floor=log_floor)
  return mse + hybrid_lambda * vb


def loss_per_example(params: Any, apply_fn: ApplyFn,
                     schedule: DiffusionSchedule, x0: Array, t: Array,
                     noise: Array, dropout_rng: Optional[Array] = None,
                     **options) -> Array:
  """:func:`losses_from_output` with the network applied to x_t."""
  x_t = q_sample(schedule, x0, t, noise)
  return losses_from_output(schedule, apply_fn(params, x_t, t, dropout_rng),
                            x0, t, noise, x_t=x_t, **options)

