"""The reverse process: Algorithm 2 as one ``lax.scan`` under ``jax.jit``.

The loop body is traced and compiled once, whatever T. Every example has
its own key, ``fold_in(key, offset + b)`` for row b: its x_T and the noise
of each step come from that key alone, so sample j of a request is the
same whatever the batch size or the number of devices the batch is split
over.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jax.sharding import NamedSharding

from ddpm_jax.diffusion import ApplyFn, p_step_from_output
from ddpm_jax.schedules import DiffusionSchedule
from ddpm_jax.self_conditioning import conditioned_input


class ExampleNoise:
  """x_T and per-step noise of a batch, each row from its own key
  (``fold_in(key, offset + row)``), optionally constrained to a batch
  ``sharding``. Usable inside jit."""

  def __init__(self, key: jax.Array, shape: Tuple[int, ...],
               offset: Any = 0, sharding: Optional[NamedSharding] = None):
    rows = jnp.asarray(offset, jnp.uint32) + jnp.arange(shape[0],
                                                        dtype=jnp.uint32)
    self._keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)
    self._row_shape = tuple(shape[1:])
    self._sharding = sharding

  def _draw(self, fn) -> jnp.ndarray:
    x = jax.vmap(lambda k: jax.random.normal(fn(k), self._row_shape,
                                             jnp.float32))(self._keys)
    if self._sharding is not None:
      x = jax.lax.with_sharding_constraint(x, self._sharding)
    return x

  def initial(self) -> jnp.ndarray:
    """x_T ~ N(0, I)."""
    return self._draw(lambda k: jax.random.split(k)[0])

  def at(self, i: Any) -> jnp.ndarray:
    """The z of step index ``i``."""
    return self._draw(lambda k: jax.random.fold_in(jax.random.split(k)[1],
                                                   i))


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "shape", "clip_denoised", "variance", "mean_from",
    "return_every", "prediction", "self_condition", "sharding"))
def sample(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
           key: jax.Array, shape: Tuple[int, ...], *,
           clip_denoised: bool = True, variance: str = "fixedsmall",
           mean_from: str = "x0", return_every: int = 0,
           prediction: str = "eps", self_condition: bool = False,
           timestep_map: Optional[jnp.ndarray] = None, offset: Any = 0,
           sharding: Optional[NamedSharding] = None
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
  ``timestep_map`` (a respaced ``schedule``, :mod:`ddpm_jax.spacing`): the
  training timestep the network sees at each index of ``schedule``.
  Row b's randomness comes from ``fold_in(key, offset + b)``
  (:class:`ExampleNoise`); ``sharding`` splits the batch over devices.
  Returns (x_0 in float32, trajectory dict, empty without ``return_every``).
  """
  noise = ExampleNoise(key, shape, offset, sharding)
  return reverse_chain(params, apply_fn, schedule, noise.initial(), noise.at,
                        clip_denoised, variance, mean_from, return_every,
                        prediction, self_condition, timestep_map)


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
                   num_steps=None):
  """Algorithm 2 from ``x_init`` over t = num_steps-1 .. 0 (default: all T)
  in one lax.scan."""
  num_t = schedule.num_timesteps if num_steps is None else int(num_steps)
  batch = x_init.shape[0]
  model_t = (lambda t: t) if timestep_map is None else (
      lambda t: jnp.asarray(timestep_map, jnp.int32)[t])

  def step(carry, t):
    x, x0_prev = carry
    t_vec = jnp.full((batch,), model_t(t), jnp.int32)
    x_in = conditioned_input(x, x0_prev) if self_condition else x
    out = apply_fn(params, x_in, t_vec, None).astype(jnp.float32)
    x_prev, x0 = p_step_from_output(schedule, x, t, out, noise_at(t),
                                    prediction=prediction,
                                    clip_denoised=clip_denoised,
                                    variance=variance, mean_from=mean_from)
    return (x_prev, x0), x0

  timesteps = jnp.arange(num_t - 1, -1, -1, dtype=jnp.int32)
  init = (x_init, jnp.zeros_like(x_init))
  if not return_every:
    (x, _), _ = jax.lax.scan(lambda c, t: (step(c, t)[0], None), init,
                             timesteps)
    return x, {}

  if num_t % return_every:
    raise ValueError(f"return_every={return_every} must divide the "
                     f"{num_t} steps")

  def chunk(carry, ts):
    carry, x0s = jax.lax.scan(step, carry, ts)
    return carry, (carry[0], x0s[-1], model_t(ts[-1]))

  (x, _), (xs, x0s, ts) = jax.lax.scan(
      chunk, init, timesteps.reshape(num_t // return_every, return_every))
  return x, {"x_t": xs, "x0": x0s, "t": ts}
