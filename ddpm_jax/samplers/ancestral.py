"""Ancestral sampling: Algorithm 2 of the paper, T steps of eq. 11 (or
its x_0 form) from x_T ~ N(0, I), in one ``lax.scan`` under ``jax.jit``
(:func:`ddpm_jax.samplers.chain.run_chain`)."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jax.sharding import NamedSharding

from ddpm_jax.diffusion import ApplyFn, p_step_from_output
from ddpm_jax.schedules import DiffusionSchedule
from ddpm_jax.samplers.chain import ExampleNoise, run_chain


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "shape", "clip_denoised", "variance", "mean_from",
    "return_every", "prediction", "self_condition", "sharding",
    "progress_every"))
def sample(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
           key: jax.Array, shape: Tuple[int, ...], *,
           clip_denoised: bool = True, variance: str = "fixedsmall",
           mean_from: str = "x0", return_every: int = 0,
           prediction: str = "eps", self_condition: bool = False,
           timestep_map: Optional[jnp.ndarray] = None, offset: Any = 0,
           sharding: Optional[NamedSharding] = None, progress_every: int = 0
           ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Draws ``shape`` (B, H, W, C) samples: x_T ~ N(0, I), then T steps.

  With ``return_every=k`` (k must divide T) the trajectory is returned too:
  ``{'x_t': [T/k, ...], 'x0': [T/k, ...], 't': [T/k]}``: after the steps
  at indices t = T-k, T-2k, ..., 0, the state that step produced and the x_0
  it predicted.
  ``prediction`` and ``variance`` say what the network outputs (see
  :data:`ddpm_jax.diffusion.PREDICTIONS` and ``VARIANCES``; a learned
  variance reads the last C of 2C output channels). With
  ``self_condition`` each step also feeds the network the x_0 its previous
  step predicted (:mod:`ddpm_jax.self_conditioning`).
  ``timestep_map`` (a respaced ``schedule``, :mod:`.spacing`): the training
  timestep the network sees at each index of ``schedule``. Row b's
  randomness comes from ``fold_in(key, offset + b)``
  (:class:`.chain.ExampleNoise`); ``sharding`` splits the batch over
  devices; ``progress_every``: see :func:`.chain.run_chain`.
  Returns (x_0 in float32, trajectory dict, empty without ``return_every``).
  """
  noise = ExampleNoise(key, shape, offset, sharding)
  return reverse_chain(params, apply_fn, schedule, noise.initial(), noise.at,
                       clip_denoised, variance, mean_from, return_every,
                       prediction, self_condition, timestep_map,
                       progress_every=progress_every)


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "clip_denoised", "variance", "mean_from", "prediction",
    "self_condition"))
def sample_with_noise(params: Any, apply_fn: ApplyFn,
                      schedule: DiffusionSchedule, x_T: jnp.ndarray,
                      noise: jnp.ndarray, *, clip_denoised: bool = True,
                      variance: str = "fixedsmall", mean_from: str = "x0",
                      prediction: str = "eps",
                      self_condition: bool = False) -> jnp.ndarray:
  """The reverse chain from a given x_T with given per-step noise:
  ``noise[t]`` (shape of x_T) is the z of the step at index t (unused at
  t = 0). For parity tests against other implementations; returns x_0."""
  if noise.shape != (schedule.num_timesteps,) + x_T.shape:
    raise ValueError(f"noise must have shape (T,) + x_T.shape = "
                     f"{(schedule.num_timesteps,) + x_T.shape}, got "
                     f"{noise.shape}")
  x, _ = reverse_chain(params, apply_fn, schedule,
                       jnp.asarray(x_T, jnp.float32), lambda t: noise[t],
                       clip_denoised, variance, mean_from, 0, prediction,
                       self_condition)
  return x


def reverse_chain(params, apply_fn, schedule, x_init, noise_at,
                  clip_denoised, variance, mean_from, return_every,
                  prediction="eps", self_condition=False, timestep_map=None,
                  num_steps=None, progress_every=0):
  """Algorithm 2 from ``x_init`` over t = num_steps-1 .. 0 (default: all T);
  ``noise_at(t)`` is the z of step t."""
  num_t = schedule.num_timesteps if num_steps is None else int(num_steps)
  model_t = (lambda t: t) if timestep_map is None else (
      lambda t: jnp.asarray(timestep_map, jnp.int32)[t])

  def update(x, t, out):
    return p_step_from_output(schedule, x, t, out, noise_at(t),
                              prediction=prediction,
                              clip_denoised=clip_denoised,
                              variance=variance, mean_from=mean_from)

  return run_chain(params, apply_fn, x_init,
                   jnp.arange(num_t - 1, -1, -1, dtype=jnp.int32), model_t,
                   update, return_every=return_every,
                   self_condition=self_condition,
                   progress_every=progress_every)
