"""Bits per dimension: the variational bound (eq. 5) evaluated over every
term, L_T + sum_{t>1} L_{t-1} + L_0, for batches of data.

:func:`bpd_terms` runs the T network evaluations of one batch in a single
``lax.scan`` under ``jax.jit``; :func:`evaluate_bpd` averages it over a
dataset split, the batch sharded over the devices.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import data, losses, parallel, progress, self_conditioning
from ddpm_jax.evaluators import shares
from ddpm_jax.diffusion import ApplyFn, q_sample
from ddpm_jax.from_config import model_variance, self_conditioned
from ddpm_jax.models.unet import UNet, eps_fn
from ddpm_jax.schedules import DiffusionSchedule

Array = jnp.ndarray


STATIC = ("apply_fn", "prediction", "variance", "clip_denoised",
          "self_condition")


@functools.partial(jax.jit, static_argnames=STATIC)
def bpd_terms(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
              x0: Array, key: Array, *, prediction: str = "eps",
              variance: str = "fixedsmall", clip_denoised: bool = True,
              self_condition: bool = False) -> Dict[str, Array]:
  """The bound's terms for each example of ``x0`` (pixels on the 256-level
  grid in [-1, 1]), in bits per dimension, each t with its own noise from
  ``fold_in(key, t)``.

  A ``self_condition`` model is evaluated as it trains on its estimate
  half: at each t a first pass (zero estimate) gives the x_0 estimate that
  the second pass sees (:mod:`ddpm_jax.self_conditioning`). The sampler
  instead passes the previous step's x_0, so this is the bound of the
  one-step-estimate model, not of the sampling chain.

  Returns [B] arrays: ``total`` (the bound: prior + decoder + kl),
  ``prior`` (L_T), ``decoder`` (L_0, eq. 13), ``kl`` (sum of L_{t-1} for
  t > 1), plus ``terms`` [T, B] (the term of each t, index 0 the decoder).
  """
  batch = x0.shape[0]

  def model_output(x_t, t_vec):
    if not self_condition:
      return apply_fn(params, x_t, t_vec, None).astype(jnp.float32)
    first = apply_fn(params, self_conditioning.conditioned_input(x_t, None),
                     t_vec, None).astype(jnp.float32)
    est = self_conditioning.x0_estimate(schedule, first, x_t, t_vec,
                                        prediction=prediction,
                                        variance=variance)
    return apply_fn(params, self_conditioning.conditioned_input(x_t, est),
                    t_vec, None).astype(jnp.float32)

  def one_t(_, t):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape,
                              jnp.float32)
    t_vec = jnp.full((batch,), t, jnp.int32)
    x_t = q_sample(schedule, x0, t_vec, noise)
    term = losses.vlb_terms(schedule, model_output(x_t, t_vec), x0, x_t,
                            t_vec, prediction=prediction, variance=variance,
                            clip_denoised=clip_denoised)
    return None, term

  _, terms = jax.lax.scan(
      one_t, None, jnp.arange(schedule.num_timesteps, dtype=jnp.int32))
  prior = losses.prior_bpd(schedule, x0)
  decoder, kl = terms[0], jnp.sum(terms[1:], axis=0)
  return {"total": prior + decoder + kl, "prior": prior, "decoder": decoder,
          "kl": kl, "terms": terms}


def quantize(x: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] -> the nearest of the 256 levels the decoder's bins
  are centred on (8-bit images come back unchanged)."""
  return (np.round((np.clip(x, -1, 1) + 1) * 127.5) / 127.5 - 1).astype(
      np.float32)


PARTS = ("total", "prior", "decoder", "kl")


@functools.partial(jax.jit, static_argnames=STATIC)
def _batch_sums(params, apply_fn, schedule, x0, key, n, *, prediction,
                variance, clip_denoised, self_condition):
  out = bpd_terms(params, apply_fn, schedule, x0, key, prediction=prediction,
                  variance=variance, clip_denoised=clip_denoised,
                  self_condition=self_condition)
  counted = jnp.arange(x0.shape[0]) < n
  return {k: jnp.sum(jnp.where(counted, out[k], 0.0)) for k in PARTS}


def evaluate_bpd(params: Any, apply_fn: ApplyFn, schedule: DiffusionSchedule,
                 batches: Iterable[np.ndarray], key: Array, *,
                 prediction: str = "eps", variance: str = "fixedsmall",
                 clip_denoised: bool = True, self_condition: bool = False,
                 mesh=None) -> Dict[str, float]:
  """Mean bits/dim over ``batches`` (host arrays in [-1, 1], quantized to
  8 bits first), each batch split over ``mesh`` (default: every device of
  every process; every process passes the same batches): the bound
  (``total``) and its parts. A batch that the device count does not
  divide is padded with copies of its last image, which are not counted.
  In a multi-host job each process's devices compute the rows of each
  batch that they hold (the count is said on stderr).
  ``params`` not yet on the mesh's devices are replicated onto them.
  ``self_condition``: see :func:`bpd_terms`."""
  mesh = mesh or parallel.make_mesh()
  sharding = parallel.batch_sharding(mesh)
  params = parallel.on_mesh(params, mesh)
  sums = dict.fromkeys(PARTS, 0.0)
  count = mine = 0
  for i, batch in enumerate(progress.bar(batches, desc="bits/dim",
                                         unit="batch")):
    batch = quantize(np.asarray(batch, np.float32))
    n = len(batch)
    pad = (-n) % mesh.size
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
    x0 = jax.make_array_from_callback(batch.shape, sharding,
                                      lambda idx, b=batch: b[idx])
    out = _batch_sums(params, apply_fn, schedule, x0,
                      jax.random.fold_in(key, i), n, prediction=prediction,
                      variance=variance, clip_denoised=clip_denoised,
                      self_condition=self_condition)
    for k in PARTS:
      sums[k] += float(out[k])
    count += n
    mine += shares.local_rows(x0, n)
  if not count:
    raise ValueError("no examples to evaluate")
  shares.say(f"bits/dim of {mine} of {count} examples")
  result = {k: v / count for k, v in sums.items()}
  result["num_examples"] = count
  return result


def evaluate(config: ml_collections.ConfigDict, model: UNet, params: Any,
             schedule: DiffusionSchedule) -> Dict[str, float]:
  """Bits/dim of ``params`` on ``data.eval_split`` (at most
  ``training.eval_examples`` images; all if 0), the noise from the seed."""
  tr = config.training
  batches = data.eval_batches(config, config.data.eval_split,
                              int(tr.eval_batch_size),
                              int(tr.eval_examples) or None)
  return evaluate_bpd(
      params, eps_fn(model), schedule, batches,
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1),
      prediction=config.diffusion.prediction,
      variance=model_variance(config),
      self_condition=self_conditioned(config))
