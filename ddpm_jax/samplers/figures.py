"""The paper's sampling figures: the reverse process from a partly noised
image (Fig. 7, "shared coarse features") and interpolation in x_t (Fig. 8).

``t`` here counts forward steps as the paper does: t = 0 is the image
itself (nothing to undo), t = T the pure-noise end. The reverse chain from
step t runs the network at code indices t-1 .. 0 (Algorithm 2). Progressive
generation (Fig. 6) is the samplers' ``return_every`` trajectory; see
:func:`ddpm_jax.images.write_progression`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from ddpm_jax.diffusion import ApplyFn, q_sample
from ddpm_jax import from_config
from ddpm_jax.samplers.ancestral import reverse_chain
from ddpm_jax.samplers.chain import ExampleNoise
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray
_STATIC = ("apply_fn", "t", "clip_denoised", "variance", "mean_from",
           "prediction", "self_condition", "progress_every")


def _check_t(t: int, schedule: DiffusionSchedule) -> None:
  if not 0 <= t <= schedule.num_timesteps:
    raise ValueError(f"t must be in [0, {schedule.num_timesteps}] (forward "
                     f"steps), got {t}")


def diffuse(schedule: DiffusionSchedule, x0: Array, t: int,
            noise: Array) -> Array:
  """x_t ~ q(x_t | x_0) after ``t`` forward steps (t = 0: x_0 itself)."""
  if t == 0:
    return x0
  return q_sample(schedule, x0, jnp.full((x0.shape[0],), t - 1, jnp.int32),
                  noise)


def _decode(params, apply_fn, schedule, x_t, t, noise_at, options):
  if t == 0:
    return x_t
  x, _ = reverse_chain(params, apply_fn, schedule, x_t, noise_at,
                       options["clip_denoised"], options["variance"],
                       options["mean_from"], 0, options["prediction"],
                       options["self_condition"], None, num_steps=t,
                       progress_every=options["progress_every"])
  return x


@functools.partial(jax.jit, static_argnames=_STATIC + ("num",))
def partial_chain(params: Any, apply_fn: ApplyFn,
                  schedule: DiffusionSchedule, x0: Array, t: int,
                  key: jax.Array, num: int = 8, *, clip_denoised: bool = True,
                  variance: str = "fixedlarge", mean_from: str = "x0",
                  prediction: str = "eps", self_condition: bool = False,
                  progress_every: int = 0) -> Tuple[Array, Array]:
  """Fig. 7: one x_t ~ q(x_t | x0) for each image of ``x0`` [B, H, W, C],
  then ``num`` reverse chains from that same x_t. Returns (x_t [B, ...],
  samples [B, num, ...]); with t = 0 every sample is x0.
  ``progress_every``: see :func:`.chain.run_chain`."""
  _check_t(t, schedule)
  batch = x0.shape[0]
  key_q, key_p = jax.random.split(key)
  x_t = diffuse(schedule, x0, t, jax.random.normal(key_q, x0.shape))
  start = jnp.repeat(x_t, num, axis=0)
  noise = ExampleNoise(key_p, start.shape)
  out = _decode(params, apply_fn, schedule, start, t, noise.at,
                dict(clip_denoised=clip_denoised, variance=variance,
                     mean_from=mean_from, prediction=prediction,
                     self_condition=self_condition,
                     progress_every=progress_every))
  return x_t, out.reshape((batch, num) + x0.shape[1:])


@functools.partial(jax.jit, static_argnames=_STATIC)
def interpolate(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
                x0_a: Array, x0_b: Array, lambdas: Array, t: int,
                key: jax.Array, *, clip_denoised: bool = True,
                variance: str = "fixedlarge", mean_from: str = "x0",
                prediction: str = "eps", self_condition: bool = False,
                progress_every: int = 0) -> Array:
  """Fig. 8: x_t and x'_t ~ q(. | x0_a), q(. | x0_b) (images [H, W, C]),
  the latents (1 - lambda) x_t + lambda x'_t decoded by the reverse process
  with the same noise for every lambda. Returns [len(lambdas), H, W, C];
  with t = 0 it is the pixel-space blend (lambda 0 and 1: the endpoints).
  ``progress_every``: see :func:`.chain.run_chain`."""
  _check_t(t, schedule)
  key_a, key_b, key_p = jax.random.split(key, 3)
  x_a = diffuse(schedule, x0_a[None], t, jax.random.normal(key_a,
                                                           x0_a[None].shape))
  x_b = diffuse(schedule, x0_b[None], t, jax.random.normal(key_b,
                                                           x0_b[None].shape))
  lam = jnp.asarray(lambdas, jnp.float32).reshape(-1, 1, 1, 1)
  latents = (1.0 - lam) * x_a + lam * x_b
  one = ExampleNoise(key_p, x_a.shape)
  noise_at = lambda i: jnp.broadcast_to(one.at(i), latents.shape)
  return _decode(params, apply_fn, schedule, latents, t, noise_at,
                 dict(clip_denoised=clip_denoised, variance=variance,
                      mean_from=mean_from, prediction=prediction,
                      self_condition=self_condition,
                      progress_every=progress_every))


def chain_options(config) -> Dict[str, Any]:
  """The keyword options of :func:`partial_chain` / :func:`interpolate`
  that a run's config selects."""
  return dict(clip_denoised=bool(config.sampling.clip_denoised),
              variance=from_config.model_variance(config),
              mean_from=config.sampling.mean_from,
              prediction=config.diffusion.prediction,
              self_condition=from_config.self_conditioned(config))
