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

from ddpm_jax.choices import FIXED_VARIANCES
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray
ApplyFn = Callable[[Any, Array, Array, Optional[Array]], Array]

# What the network predicts: the noise eps (the paper's choice), x_0, the
# posterior mean of x_{t-1} (the original code's 'xprev', Table 2's mu~
# prediction) or v = sqrt(abar) eps - sqrt(1 - abar) x_0.
PREDICTIONS = ("eps", "x0", "xprev", "v")
# The reverse variance: fixed to beta~_t or beta_t (Sec. 3.2), the
# network's log-variance ('learned', the original code) or its
# interpolation between log beta~_t and log beta_t ('learned_range',
# improved DDPM). Learned ones need a U-Net with 2C output channels.
VARIANCES = FIXED_VARIANCES + ("learned", "learned_range")
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


def predict_eps_from_x0(schedule: DiffusionSchedule, x_t: Array, t: Array,
                        x0: Array) -> Array:
  """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1): eq. 4 solved
  for eps."""
  return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t -
           x0) / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def predict_x0_from_xprev(schedule: DiffusionSchedule, x_t: Array, t: Array,
                          xprev: Array) -> Array:
  """x_0 from the posterior mean mu~_t (eq. 7 solved for x_0):
  (mu~ - coef2_t x_t) / coef1_t."""
  return ((xprev - extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
          / extract(schedule.posterior_mean_coef1, t, x_t.shape))


def v_target(schedule: DiffusionSchedule, x0: Array, t: Array,
             noise: Array) -> Array:
  """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * noise -
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)


def predict_x0_from_v(schedule: DiffusionSchedule, x_t: Array, t: Array,
                      v: Array) -> Array:
  """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (the v definition solved
  for x_0, using x_t of eq. 4)."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x_t.shape) * x_t -
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)


def training_target(prediction: str, schedule: DiffusionSchedule, x0: Array,
                    x_t: Array, t: Array, noise: Array) -> Array:
  """What a network of kind ``prediction`` (:data:`PREDICTIONS`) is trained
  to output for x_t = q_sample(x0, t, noise)."""
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  if prediction == "xprev":
    return q_posterior_mean_variance(schedule, x0, x_t, t)[0]
  if prediction == "v":
    return v_target(schedule, x0, t, noise)
  raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                   f"{PREDICTIONS}")


def split_model_output(output: Array, variance: str
                       ) -> Tuple[Array, Optional[Array]]:
  """(mean part, variance part or None): a learned variance takes the last
  C of the network's 2C output channels."""
  if variance in FIXED_VARIANCES:
    return output, None
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of "
                     f"{VARIANCES}")
  mean_out, var_out = jnp.split(output, 2, axis=-1)
  return mean_out, var_out


def p_mean_from_eps(schedule: DiffusionSchedule, x_t: Array, t: Array,
                    eps: Array) -> Array:
  """mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
  (eq. 11)."""
  return extract(schedule.sqrt_recip_alphas, t, x_t.shape) * (
      x_t - extract(schedule.eps_coef, t, x_t.shape) * eps)


def p_log_variance(schedule: DiffusionSchedule, t: Array, shape,
                   variance: str = "fixedsmall",
                   var_output: Optional[Array] = None) -> Array:
  """log sigma_t^2 of p(x_{t-1} | x_t) (Sec. 3.2).

  ``fixedsmall``: the posterior variance beta~_t (log clipped at t = 0 as
  in the original code); ``fixedlarge``: beta_t, with beta~_1 at t = 0 as in
  the original code; ``learned``: ``var_output`` is the log-variance;
  ``learned_range``: ``var_output`` v in [-1, 1] interpolates,
  log sigma^2 = (v+1)/2 log beta_t + (1-(v+1)/2) log beta~_t (improved DDPM,
  eq. 15 there).
  """
  if variance == "fixedsmall":
    return extract(schedule.posterior_log_variance_clipped, t, shape)
  if variance == "fixedlarge":
    return extract(schedule.fixedlarge_log_variance, t, shape)
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of "
                     f"{VARIANCES}")
  if var_output is None:
    raise ValueError(f"variance {variance!r} needs the network's variance "
                     f"output")
  if variance == "learned":
    return var_output
  frac = (var_output + 1.0) / 2.0
  return (frac * extract(schedule.log_betas, t, shape) +
          (1.0 - frac) * extract(schedule.posterior_log_variance_clipped, t,
                                 shape))


def p_mean_variance(schedule: DiffusionSchedule, model_output: Array,
                    x_t: Array, t: Array, *, prediction: str = "eps",
                    variance: str = "fixedsmall", clip_denoised: bool = True,
                    mean_from: str = "x0") -> Tuple[Array, Array, Array]:
  """Mean and log-variance of p_theta(x_{t-1} | x_t) from the network's
  output, and the x_0 it implies: (mean, log_var, x0).

  For ``eps``, ``x0`` and ``v`` the x_0 estimate (clipped to [-1, 1] with
  ``clip_denoised``) goes through the posterior mean (eq. 7), as the
  original code does; ``mean_from='eps'`` takes eq. 11 instead (``eps``
  only). For ``xprev`` the output is the mean itself.
  """
  out, var_out = split_model_output(model_output, variance)
  log_var = p_log_variance(schedule, t, x_t.shape, variance, var_out)
  if mean_from not in MEAN_ROUTES:
    raise ValueError(f"unknown mean_from {mean_from!r}; choose one of "
                     f"{MEAN_ROUTES}")
  if mean_from == "eps" and prediction != "eps":
    raise ValueError("mean_from='eps' (eq. 11) needs prediction='eps'")
  if prediction == "xprev":
    x0 = predict_x0_from_xprev(schedule, x_t, t, out)
    return out, log_var, jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0
  if prediction == "eps":
    x0 = predict_x0_from_eps(schedule, x_t, t, out)
  elif prediction == "x0":
    x0 = out
  elif prediction == "v":
    x0 = predict_x0_from_v(schedule, x_t, t, out)
  else:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                     f"{PREDICTIONS}")
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  if mean_from == "eps":
    mean = p_mean_from_eps(schedule, x_t, t, out)
  else:
    mean, _, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
  return mean, log_var, x0


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


def p_step_from_output(schedule: DiffusionSchedule, x_t: Array, t: Array,
                       model_output: Array, noise: Array, *,
                       prediction: str = "eps", clip_denoised: bool = True,
                       variance: str = "fixedsmall",
                       mean_from: str = "x0") -> Tuple[Array, Array]:
  """x_{t-1} = mean + sigma_t z from the network's output: line 4 of
  Algorithm 2 for any :data:`PREDICTIONS` and :data:`VARIANCES` (see
  :func:`p_mean_variance`). No noise is added at t = 0. Returns
  (x_{t-1}, predicted x_0)."""
  mean, log_var, x0 = p_mean_variance(
      schedule, model_output, x_t, t, prediction=prediction,
      variance=variance, clip_denoised=clip_denoised, mean_from=mean_from)
  t = jnp.asarray(t)
  nonzero = (t > 0).astype(x_t.dtype).reshape(
      t.shape + (1,) * (x_t.ndim - t.ndim))
  return mean + nonzero * jnp.exp(0.5 * log_var) * noise, x0


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
  return p_step_from_output(schedule, x_t, t, eps, noise, prediction="eps",
                            clip_denoised=clip_denoised, variance=variance,
                            mean_from=mean_from)


@functools.partial(jax.jit, static_argnames=("apply_fn", "clip_denoised",
                                             "variance", "mean_from",
                                             "prediction"))
def p_sample_step(params: Any, apply_fn: ApplyFn,
                  schedule: DiffusionSchedule, x_t: Array, t: Array,
                  key: Optional[Array] = None, noise: Optional[Array] = None,
                  *, clip_denoised: bool = True, variance: str = "fixedsmall",
                  mean_from: str = "x0",
                  prediction: str = "eps") -> Tuple[Array, Array]:
  """One step of Algorithm 2: x_{t-1} ~ p_theta(x_{t-1} | x_t).

  ``t`` is a scalar or a (B,) vector; the noise is drawn from ``key`` unless
  given. The network outputs ``prediction`` (and, for a learned
  ``variance``, its variance in the last C of 2C channels). Returns
  (x_{t-1}, predicted x_0).
  """
  t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x_t.shape[0],))
  out = apply_fn(params, x_t, t_vec, None).astype(x_t.dtype)
  if noise is None:
    if key is None:
      raise ValueError("p_sample_step needs a key or injected noise")
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  return p_step_from_output(schedule, x_t, t, out, noise,
                            prediction=prediction,
                            clip_denoised=clip_denoised, variance=variance,
                            mean_from=mean_from)
