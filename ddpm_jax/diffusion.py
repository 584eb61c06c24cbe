"""The forward process, its posterior, the training loss and one reverse step.

One function per equation of Ho et al. (2020), arXiv 2006.11239. All are pure
and jittable; the schedule is a pytree argument and the network enters as
``apply_fn(params, x_t, t, dropout_rng) -> eps`` (a static argument under
jit; see :func:`ddpm_jax.models.unet.eps_fn`).

Timesteps follow the code's convention: t in [0, T), where index t is the
paper's t + 1.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray
ApplyFn = Callable[[Any, Array, Array, Optional[Array]], Array]

VARIANCES = ("fixedsmall", "fixedlarge")
MEAN_ROUTES = ("x0", "eps")


def extract(table: Array, t: Array, x_shape: Tuple[int, ...]) -> Array:
  """``table[t]`` shaped to broadcast against a batch of shape ``x_shape``.

  ``t`` is a scalar (one timestep for the whole batch) or a (B,) vector.
  """
  t = jnp.asarray(t)
  out = table[t]
  if t.ndim == 0:
    return out
  return out.reshape(t.shape + (1,) * (len(x_shape) - t.ndim))


def q_mean_variance(schedule: DiffusionSchedule, x0: Array,
                    t: Array) -> Tuple[Array, Array, Array]:
  """Mean, variance and log-variance of q(x_t | x_0) (eq. 4)."""
  mean = extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
  var = extract(1.0 - schedule.alphas_cumprod, t, x0.shape)
  log_var = extract(schedule.log_one_minus_alphas_cumprod, t, x0.shape)
  return mean, var, log_var


def q_sample(schedule: DiffusionSchedule, x0: Array, t: Array,
             noise: Array) -> Array:
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw of eq. 4."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0 +
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_posterior_mean_variance(schedule: DiffusionSchedule, x0: Array,
                              x_t: Array, t: Array
                              ) -> Tuple[Array, Array, Array]:
  """Mean (eq. 7), variance and clipped log-variance of q(x_{t-1}|x_t, x_0)
  (eq. 6)."""
  mean = (extract(schedule.posterior_mean_coef1, t, x_t.shape) * x0 +
          extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
  var = extract(schedule.posterior_variance, t, x_t.shape)
  log_var = extract(schedule.posterior_log_variance_clipped, t, x_t.shape)
  return mean, var, log_var


def predict_x0_from_eps(schedule: DiffusionSchedule, x_t: Array, t: Array,
                        eps: Array) -> Array:
  """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): eq. 4 solved for x_0
  (the estimate used in eq. 15)."""
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t -
          extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def p_mean_from_eps(schedule: DiffusionSchedule, x_t: Array, t: Array,
                    eps: Array) -> Array:
  """mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
  (eq. 11)."""
  return extract(schedule.sqrt_recip_alphas, t, x_t.shape) * (
      x_t - extract(schedule.eps_coef, t, x_t.shape) * eps)


def p_log_variance(schedule: DiffusionSchedule, t: Array, shape,
                   variance: str = "fixedsmall") -> Array:
  """log sigma_t^2 of p(x_{t-1} | x_t) for a fixed variance (Sec. 3.2).

  ``fixedsmall``: the posterior variance beta~_t (log clipped at t = 0 as
  in the original code); ``fixedlarge``: beta_t, with beta~_1 at t = 0 as in
  the original code.
  """
  if variance == "fixedsmall":
    return extract(schedule.posterior_log_variance_clipped, t, shape)
  if variance == "fixedlarge":
    return extract(schedule.fixedlarge_log_variance, t, shape)
  raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")


def loss_fn(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
            x0: Array, key: Optional[Array] = None, *,
            t: Optional[Array] = None, noise: Optional[Array] = None,
            dropout_rng: Optional[Array] = None) -> Array:
  """L_simple (eq. 14): E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2.

  t is uniform over [0, T) and eps standard normal, both drawn from ``key``
  unless given. The mean is over batch and pixels (as in the original code
  and the references), in float32.
  """
  batch = x0.shape[0]
  if t is None or noise is None:
    if key is None:
      raise ValueError("loss_fn needs a key unless both t and noise are given")
    key_t, key_n = jax.random.split(key)
    if t is None:
      t = jax.random.randint(key_t, (batch,), 0, schedule.num_timesteps)
    if noise is None:
      noise = jax.random.normal(key_n, x0.shape, jnp.float32)
  x_t = q_sample(schedule, x0, t, noise)
  eps = apply_fn(params, x_t, t, dropout_rng)
  return jnp.mean(jnp.square(noise - eps.astype(jnp.float32)))


def p_step_from_eps(schedule: DiffusionSchedule, x_t: Array, t: Array,
                    eps: Array, noise: Array, *, clip_denoised: bool = True,
                    variance: str = "fixedsmall",
                    mean_from: str = "x0") -> Tuple[Array, Array]:
  """x_{t-1} from the network's eps: line 4 of Algorithm 2.

  ``mean_from='x0'`` predicts x_0 (optionally clipped to [-1, 1]) and takes
  the posterior mean (eq. 7), the original code's route; ``'eps'`` uses
  eq. 11 directly (``clip_denoised`` then only affects the returned x_0).
  No noise is added at t = 0. Returns (x_{t-1}, predicted x_0).
  """
  x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  if mean_from == "x0":
    mean, _, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
  elif mean_from == "eps":
    mean = p_mean_from_eps(schedule, x_t, t, eps)
  else:
    raise ValueError(f"unknown mean_from {mean_from!r}; choose one of "
                     f"{MEAN_ROUTES}")
  log_var = p_log_variance(schedule, t, x_t.shape, variance)
  t = jnp.asarray(t)
  nonzero = (t > 0).astype(x_t.dtype).reshape(
      t.shape + (1,) * (x_t.ndim - t.ndim))
  return mean + nonzero * jnp.exp(0.5 * log_var) * noise, x0


@functools.partial(jax.jit, static_argnames=("apply_fn", "clip_denoised",
                                             "variance", "mean_from"))
def p_sample_step(params: Any, apply_fn: ApplyFn,
                  schedule: DiffusionSchedule, x_t: Array, t: Array,
                  key: Optional[Array] = None, noise: Optional[Array] = None,
                  *, clip_denoised: bool = True, variance: str = "fixedsmall",
                  mean_from: str = "x0") -> Tuple[Array, Array]:
  """One step of Algorithm 2: x_{t-1} ~ p_theta(x_{t-1} | x_t).

  ``t`` is a scalar or a (B,) vector; the noise is drawn from ``key`` unless
  given. Returns (x_{t-1}, predicted x_0).
  """
  t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x_t.shape[0],))
  eps = apply_fn(params, x_t, t_vec, None).astype(x_t.dtype)
  if noise is None:
    if key is None:
      raise ValueError("p_sample_step needs a key or injected noise")
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  return p_step_from_eps(schedule, x_t, t, eps, noise,
                         clip_denoised=clip_denoised, variance=variance,
                         mean_from=mean_from)
