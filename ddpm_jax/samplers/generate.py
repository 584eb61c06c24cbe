"""Samples from a config and parameters, like diffusers' DDPMPipeline:
the config's sampler, class labels and guidance; no training code."""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ddpm_jax import checkpoints, guidance, parallel, progress
from ddpm_jax.from_config import (ConfigError, make_betas, make_schedule,
                                  num_classes, sample_labels,
                                  sampler_options)
from ddpm_jax.models.unet import UNet, eps_fn
from ddpm_jax.samplers import scan_progress
from ddpm_jax.samplers.registry import get_sampler


def _guided(config: ml_collections.ConfigDict, model: UNet, params: Any):
  """(apply_fn, fn(offset, batch) -> the sampler's params argument) for
  the plain, class-conditional (optionally CFG) or classifier-guided
  model of ``config``."""
  ch = config.data.channels
  scale = float(config.sampling.guidance)
  clf_dir = config.sampling.classifier
  if clf_dir:
    clf_config, classifier, clf_params = checkpoints.load_classifier(
        clf_dir)
    if not np.array_equal(make_betas(clf_config), make_betas(config)):
      raise ConfigError(f"the classifier in {clf_dir} was trained with "
                        f"another noise schedule than this model's: train "
                        f"it with the same diffusion settings")
    if config.diffusion.prediction != "eps":
      raise ConfigError("classifier guidance needs an eps-prediction model "
                        "(diffusion.prediction='eps')")
    classes = int(clf_config.classifier.num_classes)
    if config.sampling.label >= classes:
      raise ConfigError(f"sampling.label={config.sampling.label} is not a "
                        f"class of the classifier in {clf_dir}: give one "
                        f"in [0, {classes}) or -1 (each in turn)")
    sched = make_schedule(config)
    return (guidance.classifier_guided_fn(
        model, classifier, ch, bool(config.sampling.clip_denoised)),
            lambda offset, batch: {
                "params": params, "classifier": clf_params,
                "labels": jnp.asarray(sample_labels(config, offset, batch,
                                                    classes)),
                "guidance": jnp.float32(scale),
                "sqrt_alphas_cumprod": sched.sqrt_alphas_cumprod,
                "sqrt_one_minus_alphas_cumprod":
                    sched.sqrt_one_minus_alphas_cumprod})
  if num_classes(config):
    apply_fn = (guidance.cfg_fn(model, ch) if scale else
                guidance.conditional_fn(model))
    return apply_fn, lambda offset, batch: guidance.bundle(
        params, sample_labels(config, offset, batch), scale or None)
  return eps_fn(model), lambda offset, batch: params


def generate(config: ml_collections.ConfigDict, model: UNet, params: Any,
             num: int, batch_size: int, seed: int,
             mesh: Optional[Mesh] = None) -> np.ndarray:
  """``num`` samples in [-1, 1] as a NumPy array (on every process) with the
  sampler of ``config.sampling``.

  Sample j draws its randomness from ``fold_in(PRNGKey(seed), j)``, so it
  does not depend on ``batch_size`` or on the devices. Each batch is split
  over ``mesh`` (default: every device of every process; ``batch_size`` is
  rounded up to a multiple of the device count) and gathered back.
  A class-conditional model draws sample j of class ``sampling.label``
  (-1: j mod num_classes), guided with scale ``sampling.guidance``
  (classifier-free); with ``sampling.classifier`` (a train_classifier.py
  workdir) an unconditional model is guided by that classifier instead.
  """
  mesh = mesh or parallel.make_mesh()
  size, ch = config.data.image_size, config.data.channels
  draw = get_sampler(config.sampling.sampler)
  betas, options = make_betas(config), sampler_options(config)
  batch = -(-int(batch_size) // mesh.size) * mesh.size
  key = jax.random.PRNGKey(seed)
  # Placed once, not once per batch (the sampler leaves placed arrays be).
  params = parallel.on_mesh(params, mesh)
  apply_fn, inputs_for = _guided(config, model, params)
  if config.sampling.classifier:
    options["clip_denoised"] = False  # the guided apply_fn clips first
  out = []
  steps = int(config.sampling.steps) or config.diffusion.num_timesteps
  batches = int(math.ceil(num / batch))
  # Watched on a terminal: a bar over every step of every batch, moved
  # from inside each batch's chain; else one over batches.
  every = scan_progress.every(steps)
  bar = progress.bar(total=batches * steps if every else batches,
                     desc=f"sampling {num} ({steps} steps)",
                     unit="step" if every else "batch")
  with bar:
    for i in range(batches):
      with scan_progress.reporting(bar, i * steps):
        x, _ = draw(inputs_for(i * batch, batch), apply_fn, betas, key,
                    (batch, size, size, ch), offset=i * batch, mesh=mesh,
                    progress_every=every, **options)
        if jax.process_count() > 1:
          x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x))
      if not every:
        bar.update(1)
  return np.concatenate(out)[:num]
