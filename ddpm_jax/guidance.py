"""Class conditioning and classifier-free guidance (Ho & Salimans 2022,
arXiv 2207.12598).

A class-conditional U-Net (``model.num_classes`` > 0) still enters the
pure diffusion code as ``apply_fn(params, x_t, t, dropout_rng)``: its
``params`` argument is a bundle ``{'params': ..., 'labels': [B] int32}``
(plus ``'guidance'``, the scale w, for :func:`cfg_fn`), so labels and the
scale are ordinary traced arrays and the samplers compile once for any
labels. Label ``num_classes`` is the null class (unconditional).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.classifier import log_prob_fn

Array = jnp.ndarray


def bundle(params: Any, labels: Array, guidance: Optional[Any] = None
           ) -> Dict[str, Any]:
  """The ``params`` argument of :func:`conditional_fn` / :func:`cfg_fn`."""
  out = {"params": params, "labels": jnp.asarray(labels, jnp.int32)}
  if guidance is not None:
    out["guidance"] = jnp.asarray(guidance, jnp.float32)
  return out


def drop_labels(key: Array, labels: Array, num_classes: int,
                p: float) -> Array:
  """Each label replaced by the null class with probability ``p`` (the
  training side of classifier-free guidance)."""
  if p <= 0:
    return labels
  drop = jax.random.bernoulli(key, p, labels.shape)
  return jnp.where(drop, num_classes, labels)


def classifier_free_guidance(cond: Array, uncond: Array, w: Array) -> Array:
  """eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null) (Ho & Salimans, eq. 6).
  w = 0 is the conditional model; diffusers' guidance_scale is 1 + w."""
  return cond + w * (cond - uncond)


def classifier_guided_eps(eps: Array, sqrt_one_minus_alphas_cumprod: Array,
                          scale: Array, grad_log_prob: Array) -> Array:
  """eps^ = eps - sqrt(1 - abar_t) s grad_{x_t} log p_phi(y | x_t)
  (Dhariwal & Nichol 2021, Algorithm 2; seed 003's derivation): the score
  of p(x_t | y) = p(x_t) p(y | x_t) / p(y), in eps units."""
  return eps - sqrt_one_minus_alphas_cumprod * scale * grad_log_prob


@functools.lru_cache(maxsize=None)
def classifier_guided_fn(model: nn.Module, classifier: nn.Module,
                         mean_channels: int, clip_denoised: bool = False):
  """``apply_fn(bundle, x_t, t, dropout_rng)`` of an unconditional eps-model
  guided by a noise-aware classifier (:mod:`ddpm_jax.models.classifier`).
  The bundle holds ``params``, ``classifier`` (its params), ``labels``,
  ``guidance`` (the scale s), and ``sqrt_alphas_cumprod`` and
  ``sqrt_one_minus_alphas_cumprod`` (the training schedule's tables,
  indexed by the training t the sampler passes). The gradient is
  ``jax.grad`` of the summed log-probabilities (each example's only
  depends on its own x_t).

  With ``clip_denoised`` the model's x_0 estimate is clipped to [-1, 1]
  and eps re-derived from it *before* the guidance term is added, and the
  sampler must then run without clipping (:func:`generate.generate` does
  so): the guided x_0 = clip(x_0) + (1 - abar_t) / sqrt(abar_t) s grad is
  not clipped again. This is the order of Dhariwal & Nichol's code
  (guided_diffusion ``condition_score``); clipping after guidance would cut
  the guidance term off wherever it is large (high t) and saturate the
  samples."""
  log_prob = log_prob_fn(classifier)

  def apply_fn(b, x_t, t, dropout_rng=None):
    out = _apply(model, b["params"], x_t, t, None, dropout_rng)
    grad = jax.grad(lambda x: jnp.sum(log_prob(b["classifier"], x, t,
                                               b["labels"])))(x_t)
    sigma = b["sqrt_one_minus_alphas_cumprod"][t].reshape(-1, 1, 1, 1)
    eps = out[..., :mean_channels]
    if clip_denoised:
      eps = clipped_eps(eps, x_t, b["sqrt_alphas_cumprod"][t].reshape(
          -1, 1, 1, 1), sigma)
    eps = classifier_guided_eps(eps, sigma, b["guidance"], grad)
    return jnp.concatenate([eps, out[..., mean_channels:]], axis=-1)

  return apply_fn


def clipped_eps(eps: Array, x_t: Array, sqrt_alphas_cumprod: Array,
                sqrt_one_minus_alphas_cumprod: Array) -> Array:
  """The eps for which x_0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) (eq. 4
  solved for x_0) is the model's x_0 estimate clipped to [-1, 1]."""
  x0 = jnp.clip((x_t - sqrt_one_minus_alphas_cumprod * eps) /
                sqrt_alphas_cumprod, -1.0, 1.0)
  return (x_t - sqrt_alphas_cumprod * x0) / sqrt_one_minus_alphas_cumprod


def _apply(model: nn.Module, params, x, t, labels, dropout_rng):
  if dropout_rng is None:
    return model.apply({"params": params}, x, t, train=False, labels=labels)
  return model.apply({"params": params}, x, t, train=True, labels=labels,
                     rngs={"dropout": dropout_rng})


@functools.lru_cache(maxsize=None)
def conditional_fn(model: nn.Module):
  """``apply_fn(bundle, x_t, t, dropout_rng)``: the model at the bundle's
  labels. Cached per model (a static argument under jit)."""

  def apply_fn(b, x_t, t, dropout_rng=None):
    return _apply(model, b["params"], x_t, t, b["labels"], dropout_rng)

  return apply_fn


@functools.lru_cache(maxsize=None)
def cfg_fn(model: nn.Module, mean_channels: int):
  """``apply_fn(bundle, x_t, t, dropout_rng)`` with classifier-free
  guidance at scale ``bundle['guidance']``: the conditional and the null
  pass run as one batch of 2B. Guidance applies to the first
  ``mean_channels`` output channels; a learned variance (the rest) is the
  conditional pass's."""

  def apply_fn(b, x_t, t, dropout_rng=None):
    batch = x_t.shape[0]
    null = jnp.full((batch,), model.num_classes, jnp.int32)
    both = _apply(model, b["params"], jnp.concatenate([x_t, x_t]),
                  jnp.concatenate([t, t]),
                  jnp.concatenate([b["labels"], null]), dropout_rng)
    cond, uncond = both[:batch], both[batch:]
    mean = classifier_free_guidance(cond[..., :mean_channels],
                                    uncond[..., :mean_channels],
                                    b["guidance"])
    return jnp.concatenate([mean, cond[..., mean_channels:]], axis=-1)

  return apply_fn
