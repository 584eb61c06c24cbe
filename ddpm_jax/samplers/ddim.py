"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models",
arXiv 2010.02502): the non-Markovian reverse step, any eta >= 0.

One step from timestep t to t_prev (DDIM eq. 12, with sigma from eq. 16):

  x_{t_prev} = sqrt(abar_prev) x0_hat
               + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

eta = 0 is the deterministic DDIM sampler; eta = 1 with every step kept is
DDPM's ancestral sampler with the 'fixedsmall' variance. t_prev = -1 means
the last step, to x_0: abar_prev is then 1 (``set_alpha_to_one``) or
abar_0. The per-step coefficients are computed once in float64 NumPy
(:func:`ddim_coefficients`) and kept as float32 in a :class:`DDIMPlan`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from ddpm_jax import diffusion
from ddpm_jax.samplers import spacing
from ddpm_jax.diffusion import ApplyFn
from ddpm_jax.samplers.chain import ExampleNoise, run_chain
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray


@flax.struct.dataclass
class DDIMPlan:
  """The steps of a DDIM chain, noisiest first: [S] arrays. A pytree."""
  t: jnp.ndarray  # int32 training timestep of each step
  sqrt_alphas_cumprod_prev: jnp.ndarray
  direction_coef: jnp.ndarray  # sqrt(1 - abar_prev - sigma^2)
  sigma: jnp.ndarray

  @property
  def num_steps(self) -> int:
    return self.t.shape[0]


def ddim_sigma(alphas_cumprod: np.ndarray, alphas_cumprod_prev: np.ndarray,
               eta: float) -> np.ndarray:
  """sigma_t(eta) of DDIM eq. 16:
  eta sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))."""
  a, a_prev = np.asarray(alphas_cumprod), np.asarray(alphas_cumprod_prev)
  return eta * np.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))


def ddim_coefficients(betas: np.ndarray, t: np.ndarray, t_prev: np.ndarray,
                      eta: float, set_alpha_to_one: bool = True
                      ) -> Dict[str, np.ndarray]:
  """float64 coefficients of DDIM eq. 12 for each (t, t_prev) pair."""
  if eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
  t, t_prev = np.asarray(t, np.int64), np.asarray(t_prev, np.int64)
  final = 1.0 if set_alpha_to_one else abar[0]
  a = abar[t]
  a_prev = np.where(t_prev >= 0, abar[np.maximum(t_prev, 0)], final)
  sigma = ddim_sigma(a, a_prev, eta)
  return {"sqrt_alphas_cumprod_prev": np.sqrt(a_prev),
          "direction_coef": np.sqrt(np.maximum(1.0 - a_prev - sigma**2, 0.0)),
          "sigma": sigma}


def make_plan(betas: np.ndarray, num_steps: int, *, eta: float = 0.0,
              spacing_name: str = "uniform", set_alpha_to_one: bool = True,
              steps_offset: int = 0) -> DDIMPlan:
  """The :class:`DDIMPlan` of ``num_steps`` steps chosen by ``spacing_name``
  (see :mod:`ddpm_jax.samplers.spacing`)."""
  t, t_prev = spacing.timestep_pairs(spacing_name, len(betas), num_steps,
                                     steps_offset)
  c = ddim_coefficients(betas, t, t_prev, eta, set_alpha_to_one)
  return DDIMPlan(t=jnp.asarray(t, jnp.int32),
                  **{k: jnp.asarray(v.astype(np.float32))
                     for k, v in c.items()})


def x0_and_eps(schedule: DiffusionSchedule, model_output: Array, x_t: Array,
               t: Array, prediction: str) -> Tuple[Array, Array]:
  """(x_0, eps) implied by the network's output (eq. 4 solved for the
  other one)."""
  if prediction == "eps":
    return diffusion.predict_x0_from_eps(schedule, x_t, t,
                                         model_output), model_output
  if prediction == "x0":
    x0 = model_output
  elif prediction == "v":
    x0 = diffusion.predict_x0_from_v(schedule, x_t, t, model_output)
  else:
    raise ValueError(f"DDIM takes prediction 'eps', 'x0' or 'v', not "
                     f"{prediction!r}")
  return x0, diffusion.predict_eps_from_x0(schedule, x_t, t, x0)


def ddim_step(schedule: DiffusionSchedule, x_t: Array, t: Array,
              sqrt_alphas_cumprod_prev: Array, direction_coef: Array,
              sigma: Array, model_output: Array, noise: Array, *,
              prediction: str = "eps", clip_denoised: bool = True,
              rederive_eps: bool = False) -> Tuple[Array, Array]:
  """One DDIM step (eq. 12): (x_{t_prev}, x0_hat).

  ``clip_denoised`` clips x0_hat to [-1, 1]; ``rederive_eps`` then
  recomputes eps_hat from the clipped x0_hat (diffusers'
  ``use_clipped_model_output``; lucidrains always does), else eps_hat is
  the network's own.
  """
  x0, eps = x0_and_eps(schedule, model_output, x_t, t, prediction)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
    if rederive_eps:
      eps = diffusion.predict_eps_from_x0(schedule, x_t, t, x0)
  return (sqrt_alphas_cumprod_prev * x0 + direction_coef * eps +
          sigma * noise), x0


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "shape", "prediction", "variance", "clip_denoised",
    "rederive_eps", "return_every", "self_condition", "sharding",
    "progress_every"))
def sample(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
           plan: DDIMPlan, key: jax.Array, shape: Tuple[int, ...], *,
           prediction: str = "eps", variance: str = "fixedsmall",
           clip_denoised: bool = True, rederive_eps: bool = False,
           return_every: int = 0, self_condition: bool = False,
           x_init: Optional[Array] = None, offset: Any = 0,
           sharding: Optional[NamedSharding] = None, progress_every: int = 0
           ) -> Tuple[Array, Dict[str, Array]]:
  """DDIM sampling along ``plan`` in one ``lax.scan``: x_T ~ N(0, I) (or
  ``x_init``) and step i's noise from row b's key ``fold_in(key, offset +
  b)`` (:class:`ddpm_jax.samplers.chain.ExampleNoise`); ``sharding`` splits the
  batch over devices.
  A learned-variance network's variance channels are ignored (DDIM sets
  its own). Returns (x_0, trajectory) as :func:`.ancestral.sample` does,
  the trajectory every ``return_every`` steps; ``progress_every``: see
  :func:`.chain.run_chain`."""
  noise = ExampleNoise(key, shape, offset, sharding)
  x = noise.initial() if x_init is None else jnp.asarray(x_init, jnp.float32)
  return run_plan(params, apply_fn, schedule, plan, x, noise.at,
                  prediction=prediction, variance=variance,
                  clip_denoised=clip_denoised,
                  rederive_eps=rederive_eps, return_every=return_every,
                  self_condition=self_condition,
                  progress_every=progress_every)


def run_plan(params, apply_fn, schedule, plan, x_init, noise_at, *,
             prediction, clip_denoised, rederive_eps, variance="fixedsmall",
             return_every=0, self_condition=False, progress_every=0):
  """The chain over ``plan`` from ``x_init``; ``noise_at(i)`` is step i's
  z."""

  def update(x, i, out):
    out, _ = diffusion.split_model_output(out, variance)
    return ddim_step(schedule, x, plan.t[i], plan.sqrt_alphas_cumprod_prev[i],
                     plan.direction_coef[i], plan.sigma[i], out,
                     noise_at(i), prediction=prediction,
                     clip_denoised=clip_denoised, rederive_eps=rederive_eps)

  return run_chain(params, apply_fn, x_init,
                   jnp.arange(plan.num_steps, dtype=jnp.int32),
                   lambda i: plan.t[i], update, return_every=return_every,
                   self_condition=self_condition,
                   progress_every=progress_every)
