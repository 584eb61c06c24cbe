"""Training: the train state, one optimisation step, and the training loop.

Structured as the flax examples: :func:`create_train_state`,
:func:`train_step` (jitted, pure) and :func:`train_and_evaluate`. The step's
randomness is ``fold_in(state.rng, step)`` with ``state.rng`` drawn from the
config's seed and checkpointed, so every step is reproducible, independent
of the device count, and a resumed run continues exactly.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from typing import Any, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from ddpm_jax import (checkpoints, compilation, data, evaluation, guidance,
                      images, losses, parallel, self_conditioning)
from ddpm_jax.diffusion import FIXED_VARIANCES, MEAN_ROUTES, PREDICTIONS
from ddpm_jax.models import conv
from ddpm_jax.models.conv import UPSAMPLE_CONVS
from ddpm_jax.models.unet import (ACTIVATIONS, DROPOUT_RNGS, UNet,
                                  dropout_over_batch_slice, eps_fn,
                                  unet_from_config)
from ddpm_jax.samplers import get_sampler, sampler_names
from ddpm_jax.spacing import SPACINGS
from ddpm_jax.schedules import (DiffusionSchedule, beta_schedule_names,
                                betas_from_config)
from ddpm_jax.schedules import make_schedule as make_schedule_from_betas


# model.dtype: the compute dtype of convolutions, dense layers and attention.
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and the fix."""


class TrainState(flax.struct.PyTreeNode):
  """Step, base rng key, parameters, their EMA and the optimizer state (all
  checkpointed)."""
  step: jnp.ndarray
  rng: jnp.ndarray  # uint32[2]; step s uses fold_in(rng, s)
  params: Any
  ema_params: Any
  opt_state: Any


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """``config`` at a dotted path such as ``training.loss``."""
  for part in dotted.split("."):
    config = config[part]
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first invalid field."""
  checks = [
      ("training.batch_size", config.training.batch_size > 0, "a positive int"),
      ("training.num_steps", config.training.num_steps > 0, "a positive int"),
      ("training.ema_decay", 0.0 <= config.training.ema_decay < 1.0,
       "in [0, 1)"),
      ("training.log_every", config.training.log_every > 0, "a positive int"),
      ("training.checkpoint_every", config.training.checkpoint_every > 0,
       "a positive int"),
      ("training.sample_every", config.training.sample_every >= 0,
       ">= 0 (0: only at the end)"),
      ("optim.learning_rate", config.optim.learning_rate > 0, "positive"),
      ("optim.warmup_steps", config.optim.warmup_steps >= 0, ">= 0"),
      ("diffusion.num_timesteps", config.diffusion.num_timesteps > 0,
       "a positive int"),
      ("diffusion.schedule", config.diffusion.schedule in beta_schedule_names()
       or (config.diffusion.schedule == "custom" and
           bool(config.diffusion.get("betas", None))),
       f"one of {beta_schedule_names()}, or 'custom' with diffusion.betas"),
      ("sampling.variance", config.sampling.variance in FIXED_VARIANCES,
       f"one of {FIXED_VARIANCES}"),
      ("sampling.mean_from", config.sampling.mean_from in MEAN_ROUTES,
       f"one of {MEAN_ROUTES}"),
      ("sampling.num_samples", config.sampling.num_samples > 0,
       "a positive int"),
      ("model.num_classes", config.model.get("num_classes", 0) >= 0,
       ">= 0 (0: unconditional)"),
      ("sampling.label", -1 <= config.sampling.get("label", -1) <
       max(config.model.get("num_classes", 0), 0) or
       config.sampling.get("label", -1) == -1 or
       (config.sampling.get("label", -1) >= 0 and
        bool(config.sampling.get("classifier", ""))),
       f"-1 (every class in turn) or a class in [0, "
       f"{config.model.get('num_classes', 0)})"),
      ("sampling.guidance", config.sampling.get("guidance", 0.0) == 0 or
       config.model.get("num_classes", 0) > 0 or
       bool(config.sampling.get("classifier", "")),
       "0 unless model.num_classes > 0 (classifier-free guidance) or "
       "sampling.classifier is set (classifier guidance)"),
      ("sampling.classifier", not (config.sampling.get("classifier", "") and
                                   config.model.get("num_classes", 0)),
       "'' for a class-conditional model (it takes classifier-free "
       "guidance)"),
      ("training.label_dropout",
       0 <= config.training.get("label_dropout", 0.0) < 1, "in [0, 1)"),
      ("training.microbatch_size",
       config.training.get("microbatch_size", -1) >= -1,
       "-1 (auto), 0 (each device's examples in one pass) or a positive "
       "int"),
      ("sampling.sampler", config.sampling.get("sampler", "ddpm") in
       sampler_names(), f"one of {sampler_names()}"),
      ("sampling.steps", 0 <= config.sampling.get("steps", 0) <=
       config.diffusion.num_timesteps,
       f"0 (all) .. diffusion.num_timesteps={config.diffusion.num_timesteps}"),
      ("sampling.spacing", config.sampling.get("spacing", "uniform") in
       SPACINGS, f"one of {SPACINGS}"),
      ("sampling.eta", config.sampling.get("eta", 0.0) >= 0 and (
          config.sampling.get("eta", 0.0) == 0 or
          config.sampling.get("sampler", "ddpm") == "ddim"),
       ">= 0, and 0 unless sampling.sampler='ddim'"),
      ("sampling.batch_size", config.sampling.batch_size > 0, "a positive int"),
      ("training.quality_metric",
       config.training.get("quality_metric", "digits") in ("digits", "fid")
       and (config.training.get("quality_metric", "digits") == "fid" or
            not config.training.get("quality_every", 0) or
            config.data.name == "digits"),
       "'digits' (digits models only) or 'fid'"),
      ("training.quality_samples",
       config.training.get("quality_samples", 297) >= 2,
       "at least 2 (a covariance needs 2; FID protocols use 10k-50k)"),
      ("data.image_size", config.data.image_size > 0, "a positive int"),
      ("model.ch", config.model.ch > 0 and
       config.model.ch % config.model.num_groups == 0,
       f"a positive multiple of model.num_groups={config.model.num_groups}"),
      ("model.act", config.model.get("act", "swish") in ACTIVATIONS,
       f"one of {sorted(ACTIVATIONS)}"),
      ("model.downsample_padding",
       config.model.get("downsample_padding", 0) in (0, 1), "0 or 1"),
      ("model.dropout_rng_impl",
       config.model.get("dropout_rng_impl", "threefry4x32") in DROPOUT_RNGS,
       f"one of {DROPOUT_RNGS} (the generator of the dropout masks)"),
      ("model.upsample_conv",
       config.model.get("upsample_conv", "subpixel") in UPSAMPLE_CONVS,
       f"one of {UPSAMPLE_CONVS} (how upsample-then-conv is computed)"),
      ("model.dtype", config.model.get("dtype", "float32") in COMPUTE_DTYPES,
       f"one of {COMPUTE_DTYPES} (the compute dtype; params stay float32)"),
  ]
  for field, ok, want in checks:
    if not ok:
      value = _field(config, field)
      raise ConfigError(f"config field {field}={value!r} is invalid: "
                        f"set --config.{field} to {want}")
  head_dim = config.model.get("attn_head_dim", None)
  widths = [config.model.ch * m for m in config.model.ch_mult]
  if head_dim is not None and (head_dim <= 0 or any(w % head_dim
                                                    for w in widths)):
    raise ConfigError(
        f"config field model.attn_head_dim={head_dim} is invalid: set "
        f"--config.model.attn_head_dim to a divisor of every block width "
        f"{widths}, or leave it unset for one head")
  _validate_objective(config)
  levels = len(config.model.ch_mult)
  if config.data.image_size % (2**(levels - 1)):
    raise ConfigError(
        f"config field data.image_size={config.data.image_size} must be "
        f"divisible by 2**(len(model.ch_mult) - 1) = {2**(levels - 1)}")


LEARNED_VARIANCES = ("", "learned", "learned_range")


def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """The prediction / variance / loss / weighting combination is one that
  trains: raises :class:`ConfigError` naming the field otherwise."""
  o = objective_options(config)
  learned = config.diffusion.get("learned_variance", "")
  fields = [
      ("diffusion.prediction", o["prediction"], PREDICTIONS),
      ("diffusion.learned_variance", learned, LEARNED_VARIANCES),
      ("training.loss", o["loss_type"], losses.LOSS_TYPES),
      ("training.loss_weighting", o["weighting"], losses.WEIGHTINGS),
  ]
  for field, value, allowed in fields:
    if value not in allowed:
      raise ConfigError(f"config field {field}={value!r} is invalid: set "
                        f"--config.{field} to one of {allowed}")
  problems = [
      (o["loss_type"] == "hybrid" and not learned, "training.loss",
       "'hybrid' trains a learned variance: set diffusion.learned_variance "
       "to 'learned' or 'learned_range', or training.loss='mse'"),
      (o["loss_type"] == "mse" and bool(learned), "training.loss",
       "'mse' leaves the learned variance untrained: set training.loss to "
       "'hybrid' or 'kl', or diffusion.learned_variance=''"),
      (o["weighting"] != "none" and o["loss_type"] == "kl",
       "training.loss_weighting", "weights the mse and has no effect with "
       "training.loss='kl': set it to 'none'"),
      (o["weighting"] != "none" and o["prediction"] == "xprev",
       "training.loss_weighting", "is defined for the eps, x0 and v "
       "predictions: set it to 'none' with diffusion.prediction='xprev'"),
      (config.sampling.mean_from == "eps" and o["prediction"] != "eps",
       "sampling.mean_from", "'eps' (eq. 11) needs diffusion.prediction="
       "'eps': set it to 'x0'"),
  ]
  for bad, field, why in problems:
    if bad:
      raise ConfigError(f"config field {field}={_field(config, field)!r} "
                        f"{why}")


def make_betas(config: ml_collections.ConfigDict) -> np.ndarray:
  """The float64 betas of ``config.diffusion``."""
  d = config.diffusion
  return betas_from_config(d.schedule, d.num_timesteps, d.get("betas", None),
                           beta_start=d.get("beta_start", None),
                           beta_end=d.get("beta_end", None))


def make_schedule(config: ml_collections.ConfigDict) -> DiffusionSchedule:
  """The diffusion tables of ``config.diffusion``."""
  return make_schedule_from_betas(make_betas(config))


def model_variance(config: ml_collections.ConfigDict) -> str:
  """The variance of p_theta: the learned kind
  (``diffusion.learned_variance``) or else the fixed ``sampling.variance``."""
  return config.diffusion.get("learned_variance", "") or \
      config.sampling.variance


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The class count of a class-conditional model (0: unconditional)."""
  return int(config.model.get("num_classes", 0))


def self_conditioned(config: ml_collections.ConfigDict) -> bool:
  """Whether the U-Net takes an x_0 estimate as extra input channels."""
  return bool(config.model.get("self_condition", False))


def objective_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The keyword options of :func:`ddpm_jax.losses.losses_from_output` that
  ``config`` selects."""
  d, tr = config.diffusion, config.training
  return dict(prediction=d.get("prediction", "eps"),
              variance=model_variance(config),
              loss_type=tr.get("loss", "mse"),
              weighting=tr.get("loss_weighting", "none"),
              hybrid_lambda=float(tr.get("hybrid_lambda", 1e-3)),
              min_snr_gamma=float(tr.get("min_snr_gamma", 5.0)),
              p2_gamma=float(tr.get("p2_gamma", 1.0)),
              p2_k=float(tr.get("p2_k", 1.0)))


def make_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of ``config.model`` for ``config.data``'s channel count (2x
  the channels out when the variance is learned)."""
  c = config.data.channels
  learned = bool(config.diffusion.get("learned_variance", ""))
  return unet_from_config(config.model, c, 2 * c if learned else c)


def learning_rate_fn(config: ml_collections.ConfigDict):
  """step -> learning rate: lr * min(1, step / warmup), as the original."""
  o = config.optim
  warmup = max(int(o.warmup_steps), 0)

  def lr_schedule(step):
    if warmup == 0:
      return jnp.asarray(o.learning_rate, jnp.float32)
    return o.learning_rate * jnp.minimum(1.0, step / warmup)

  return lr_schedule


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam with linear warmup (:func:`learning_rate_fn`) after clipping the
  gradient's global norm."""
  o = config.optim
  lr_schedule = learning_rate_fn(config)
  chain = []
  if o.grad_clip and o.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  chain.append(optax.adam(lr_schedule, b1=o.beta1, b2=o.beta2, eps=o.eps))
  return optax.chain(*chain)


def _init_fn(config: ml_collections.ConfigDict, model: UNet,
             tx: optax.GradientTransformation):
  """The function that builds the initial :class:`TrainState`."""
  size, ch = config.data.image_size, config.data.channels
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x1417)

  in_ch = 2 * ch if self_conditioned(config) else ch

  def init():
    params = model.init(key, jnp.zeros((1, size, size, in_ch)),
                        jnp.zeros((1,), jnp.int32))["params"]
    return TrainState(step=jnp.asarray(0, jnp.int32),
                      rng=jax.random.PRNGKey(config.seed), params=params,
                      ema_params=params, opt_state=tx.init(params))

  return init


def create_train_state(config: ml_collections.ConfigDict, model: UNet,
                       tx: optax.GradientTransformation,
                       mesh: Optional[Mesh] = None,
                       fsdp: bool = False) -> TrainState:
  """Fresh parameters from ``config.seed``; EMA starts equal to them.

  With ``mesh`` the state is created directly in its sharding (replicated,
  or split over the data axis with ``fsdp``), never whole on one device.
  """
  init = _init_fn(config, model, tx)
  if mesh is None:
    return compilation.jit_once(init)()
  shardings = parallel.state_sharding(jax.eval_shape(init), mesh, fsdp)
  return compilation.jit_once(init, out_shardings=shardings)()


def train_state_shapes(config: ml_collections.ConfigDict, model: UNet,
                       tx: optax.GradientTransformation,
                       mesh: Optional[Mesh] = None,
                       fsdp: bool = False) -> TrainState:
  """The :class:`TrainState` that :func:`create_train_state` would build,
  as ``jax.ShapeDtypeStruct`` leaves carrying their shardings (on the first
  device without ``mesh``): a restore template that computes nothing."""
  shapes = jax.eval_shape(_init_fn(config, model, tx))
  if mesh is None:
    mesh = parallel.make_mesh(jax.local_devices()[:1])
  shardings = parallel.state_sharding(shapes, mesh, fsdp)
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes, shardings)


def train_step(state: TrainState, batch: Any,
               schedule: DiffusionSchedule, *, apply_fn, tx, ema_decay: float,
               skip_nonfinite: bool = False,
               loss_options: Optional[Dict[str, Any]] = None,
               self_condition: bool = False, num_classes: int = 0,
               label_dropout: float = 0.0, grad_mesh: Optional[Mesh] = None,
               microbatch: int = 0
               ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One Adam step on the objective and one EMA update. Pure; jit it with
  ``apply_fn``, ``tx``, ``ema_decay`` and ``loss_options`` bound.

  t is uniform over [0, T) and the noise standard normal, both drawn from
  the step's key. ``loss_options`` (see :func:`objective_options`) choose
  the prediction, variance, loss and weighting; the default is L_simple
  (eq. 14). ``self_condition``: see :mod:`ddpm_jax.self_conditioning`.
  A class-conditional model (``num_classes`` > 0, ``apply_fn`` from
  :func:`ddpm_jax.guidance.conditional_fn`) takes ``batch`` as
  ``{'image', 'label'}``; each label becomes the null class with
  probability ``label_dropout``.

  With ``grad_mesh`` (replicated params, the batch split over its data
  axis) each device differentiates the loss of its slice and the gradients
  are summed as one flat buffer (:func:`_flat_reduced_grads`).
  ``microbatch`` > 0 (one device, or with ``grad_mesh``): each device
  takes its examples ``microbatch`` at a time and accumulates the gradient
  (:func:`_slice_value_and_grad`); the same gradient up to the order of
  its float32 sums.

  ``metrics['finite']`` says whether the loss and gradient were finite; with
  ``skip_nonfinite`` a non-finite step leaves params, EMA and optimizer
  state unchanged (the step counter still advances).
  """
  key = jax.random.fold_in(state.rng, state.step)
  key_loss, key_dropout = jax.random.split(key)

  labels = None
  if num_classes:
    batch, labels = batch["image"], guidance.drop_labels(
        jax.random.fold_in(key, 3), batch["label"], num_classes,
        label_dropout)
  key_t, key_n = jax.random.split(key_loss)
  t = jax.random.randint(key_t, (batch.shape[0],), 0, schedule.num_timesteps)
  noise = jax.random.normal(key_n, batch.shape, jnp.float32)

  # The arrays every example shares (passed explicitly, for shard_map).
  shared = (schedule, key_dropout, jax.random.fold_in(key, 2))

  def per_example(model_params, shared, batch, t, noise, labels):
    schedule, key_dropout, key_coin = shared
    params = (model_params if labels is None else
              guidance.bundle(model_params, labels))
    if self_condition:
      return self_conditioning.loss_per_example(
          params, apply_fn, schedule, batch, t, noise, key_dropout,
          key_coin, **(loss_options or {}))
    return losses.loss_per_example(
        params, apply_fn, schedule, batch, t, noise, key_dropout,
        **(loss_options or {}))

  if grad_mesh is not None and grad_mesh.size > 1:
    loss, grads = _flat_reduced_grads(per_example, grad_mesh, state.params,
                                      shared, (batch, t, noise, labels),
                                      microbatch)
  elif microbatch:
    loss, grads = _slice_value_and_grad(
        per_example, state.params, shared, (batch, t, noise, labels),
        total=batch.shape[0], first_row=0, microbatch=microbatch)
  else:
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(per_example(
        p, shared, batch, t, noise, labels)))(state.params)
  return apply_gradients(state, grads, loss, tx=tx, ema_decay=ema_decay,
                         skip_nonfinite=skip_nonfinite)


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """The exponential moving average of the weights that the paper samples
  from (appendix B, decay 0.9999): ``decay * ema + (1 - decay) * params``,
  leaf by leaf."""
  return jax.tree_util.tree_map(
      lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def apply_gradients(state: TrainState, grads: Any, loss: jnp.ndarray, *,
                    tx: optax.GradientTransformation, ema_decay: float,
                    skip_nonfinite: bool = False
                    ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """The update half of :func:`train_step`: ``tx`` (clipping and Adam)
  on ``grads``, the new parameters, their EMA (:func:`ema_update`) and the
  step counter, with the metrics ``loss``, ``grad_norm`` and ``finite``.
  With ``skip_nonfinite`` a non-finite loss or gradient leaves params, EMA
  and optimizer state unchanged (the step counter still advances)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = ema_update(state.ema_params, params, ema_decay)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema, opt_state=opt_state)
  if skip_nonfinite:
    new_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new, old), new_state,
        state.replace(step=state.step + 1))
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def _slice_value_and_grad(per_example, params: Any, shared: Any,
                          batch_args: Tuple[Any, ...], *, total: int,
                          first_row: Any, microbatch: int):
  """(sum of the losses of the examples ``batch_args`` hold / ``total``,
  its gradient): rows ``first_row`` onwards of a batch of ``total`` rows
  (``None`` entries of ``batch_args`` stay None).

  With ``0 < microbatch`` < the rows held, the rows go through the U-Net
  ``microbatch`` at a time in one ``lax.scan`` and the gradients are
  summed. On the CPU, where a pass over a few images keeps its
  activations in cache, this is the fastest way through a large batch:
  the tiny32 train step on 2 cores, 64 rows per device: 16-19 img/s in
  one pass, 32-33 img/s in passes of 1-4 (docs/benchmarks.md). Dropout
  masks are the whole batch's, sliced (``dropout_over_batch_slice``)."""
  rows = jax.tree_util.tree_leaves(batch_args)[0].shape[0]

  def value_and_grad(args, first):
    def loss(p):
      return jnp.sum(per_example(p, shared, *args)) / total
    if rows == total and not microbatch:
      return jax.value_and_grad(loss)(params)
    with dropout_over_batch_slice(total, first):
      return jax.value_and_grad(loss)(params)

  if not microbatch or microbatch >= rows:
    return value_and_grad(batch_args, first_row)
  if rows % microbatch:
    raise ValueError(f"microbatch {microbatch} does not divide the {rows} "
                     f"rows of a device")
  passes = rows // microbatch
  split = jax.tree_util.tree_map(
      lambda a: a.reshape((passes, microbatch) + a.shape[1:]), batch_args)

  def one_pass(acc, xs):
    i, args = xs
    part = value_and_grad(args, first_row + i * microbatch)
    return jax.tree_util.tree_map(jnp.add, acc, part), None

  zero = (jnp.zeros((), jnp.float32),
          jax.tree_util.tree_map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(one_pass, zero,
                                  (jnp.arange(passes), split))
  return loss, grads


def _flat_reduced_grads(per_example, mesh: Mesh, params: Any, shared: Any,
                        batch_args: Tuple[Any, ...], microbatch: int = 0):
  """(mean loss, its gradient) over a batch split on ``mesh``'s data axis:
  each device differentiates the sum of its examples' losses / the batch
  size (in passes of ``microbatch`` examples if > 0), and one all-reduce
  sums the gradients raveled into one buffer.

  XLA's own placement all-reduces every parameter's gradient apart; the CPU
  backend's in-process collectives then meet once per array. For the
  digits U-Net's 208 arrays on 2 CPU devices that was 11-16 ms against
  3-4 ms for the flat buffer (docs/benchmarks.md). The dropout masks are
  the unsharded step's (``unet.dropout_over_batch_slice``), t and the
  noise come in split, so the result is the 1-device step's up to the
  order of the float32 sums (tests/test_parallel.py)."""
  axis = parallel.DATA_AXIS
  total = batch_args[0].shape[0]
  present = tuple(a is not None for a in batch_args)
  spec = jax.sharding.PartitionSpec(axis)

  def local(params, shared, *args):
    it = iter(args)
    full = tuple(next(it) if p else None for p in present)
    rows = full[0].shape[0]
    loss, grads = _slice_value_and_grad(
        per_example, params, shared, full, total=total,
        first_row=jax.lax.axis_index(axis) * rows, microbatch=microbatch)
    flat, unravel = ravel_pytree(grads)
    loss, flat = jax.lax.psum((loss, flat), axis)
    return loss, unravel(flat)

  rep = jax.sharding.PartitionSpec()
  args = tuple(a for a in batch_args if a is not None)
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(rep, rep) + (spec,) * len(args),
                       out_specs=(rep, rep), check_vma=False)(
                           params, shared, *args)


def _flat_grads_pay(mesh: Mesh, state_shardings: Any) -> bool:
  """Whether the train step sums its gradients as one flat buffer
  (:func:`_flat_reduced_grads`): on CPU devices, with the state replicated.
  Not with FSDP (its gradients are reduce-scattered, not all-reduced), and
  not on GPUs and TPUs, whose collectives take many arrays at once and
  where XLA overlaps the per-array all-reduces with the backward pass
  (one buffer at the end would wait for the whole backward pass)."""
  split = any(not s.is_fully_replicated
              for s in jax.tree_util.tree_leaves(state_shardings))
  return (mesh.size > 1 and not split and
          all(d.platform == "cpu" for d in mesh.devices.flat))


# The auto microbatch: at most this many bytes of a U-Net activation at
# full resolution per pass.
AUTO_MICROBATCH_BYTES = 256 << 10


def microbatch_size(config: ml_collections.ConfigDict, mesh: Mesh,
                    flat: bool) -> int:
  """Examples per forward/backward pass on each device (0: all of the
  device's examples in one pass); see :func:`_slice_value_and_grad`.

  ``training.microbatch_size`` -1 (auto): on CPU devices, the largest
  divisor of the examples per device that keeps one full-resolution
  activation of the pass within ``AUTO_MICROBATCH_BYTES`` (at least 1;
  0 when all of them fit); elsewhere 0 (GPUs and TPUs want large passes).
  On 2 CPU cores: tiny32 (128 KiB per image) in passes of 2, 33 against
  16-19 img/s in one pass of 64; tiny8 (8 KiB per image, 32 per device)
  in one pass, where passes of 8 were slower (docs/benchmarks.md). ``flat``: whether the step differentiates
  per device (one device, or :func:`_flat_grads_pay`); a positive size
  needs it."""
  size = int(config.training.get("microbatch_size", -1))
  rows = int(config.training.batch_size) // mesh.size
  per_device = mesh.size == 1 or flat
  if size == -1:
    if not per_device or any(d.platform != "cpu" for d in mesh.devices.flat):
      return 0
    m = config.model
    per_example = (config.data.image_size**2 * m.ch * m.ch_mult[0] *
                   jnp.dtype(m.get("dtype", "float32")).itemsize)
    target = max(1, AUTO_MICROBATCH_BYTES // per_example)
    size = max(d for d in range(1, min(target, rows) + 1) if rows % d == 0)
    return 0 if size >= rows else size
  if size and not per_device:
    raise ConfigError(f"config field training.microbatch_size={size} is "
                      f"invalid here: it applies to one device or CPU "
                      f"devices without parallel.fsdp; set "
                      f"--config.training.microbatch_size to -1 or 0")
  if size and rows % size:
    raise ConfigError(f"config field training.microbatch_size={size} is "
                      f"invalid: it must divide the {rows} examples per "
                      f"device (training.batch_size / {mesh.size} devices);"
                      f" set --config.training.microbatch_size to a "
                      f"divisor of {rows}, or -1")
  return 0 if size >= rows else size


def step_microbatch_size(config: ml_collections.ConfigDict, mesh: Mesh,
                         state_shardings: Any) -> int:
  """The pass size (:func:`microbatch_size`) of the step
  :func:`make_train_step` builds for this mesh and state placement."""
  return microbatch_size(config, mesh,
                         _flat_grads_pay(mesh, state_shardings))


def step_platform(mesh: Mesh) -> str:
  """The platform of ``mesh``'s devices ('cpu', 'gpu', 'tpu')."""
  return next(iter(mesh.devices.flat)).platform


def step_conv_backward(model: Any, micro: int, mesh: Mesh) -> Optional[str]:
  """The ``conv_backward`` the train step differentiates ``model`` with:
  the model's own, with 'auto' resolved by
  :func:`ddpm_jax.models.conv.resolve_backward` where the step is
  microbatched (``micro`` > 0: the layers run inside a ``lax.scan``);
  None for a model without the field."""
  own = getattr(model, "conv_backward", None)
  if own is None or not micro:
    return own
  return conv.resolve_backward(own, in_scan=True,
                               platform=step_platform(mesh))


def step_backward_plan(model: Any, micro: int,
                       mesh: Mesh) -> Optional[Dict[str, str]]:
  """{layer kind: backward} that the train step runs for ``model``
  (:func:`ddpm_jax.models.conv.backward_plan`); None for a model without
  ``conv_backward``."""
  backward = step_conv_backward(model, micro, mesh)
  if backward is None:
    return None
  return conv.backward_plan(backward, in_scan=bool(micro),
                            platform=step_platform(mesh))


def make_train_step(config: ml_collections.ConfigDict, model: UNet,
                    tx: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: Any):
  """:func:`train_step` jitted over ``mesh``: the batch split over the data
  axis, the state in ``state_shardings`` and donated, metrics replicated.
  Call it as ``step(state, batch, schedule)``.

  With microbatches (:func:`microbatch_size`) on CPU devices, a U-Net
  whose ``conv_backward`` is 'auto' is differentiated by 'matmul': XLA's own
  kernel gradient inside the ``lax.scan`` of the passes ran 10x slower on
  the CPU (jax 0.10.2: 14.2 s against 1.4 s for 4 passes of 8 tiny32
  images; docs/benchmarks.md). Same parameters, same function."""
  flat = _flat_grads_pay(mesh, state_shardings)
  micro = step_microbatch_size(config, mesh, state_shardings)
  backward = step_conv_backward(model, micro, mesh)
  if backward != getattr(model, "conv_backward", backward):
    model = model.clone(conv_backward=backward)
  classes = num_classes(config)
  fn = functools.partial(train_step, apply_fn=guidance.conditional_fn(model)
                         if classes else eps_fn(model), tx=tx,
                         ema_decay=float(config.training.ema_decay),
                         skip_nonfinite=bool(config.training.get(
                             "skip_nonfinite", False)),
                         loss_options=objective_options(config),
                         self_condition=self_conditioned(config),
                         num_classes=classes,
                         label_dropout=float(config.training.get(
                             "label_dropout", 0.0)),
                         grad_mesh=mesh if flat else None,
                         microbatch=micro)
  rep = parallel.replicated(mesh)
  return jax.jit(fn,
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh),
                               rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def sampler_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The keyword options of the ``config.sampling.sampler`` sampler
  (:mod:`ddpm_jax.samplers`)."""
  s = config.sampling
  options = dict(steps=int(s.get("steps", 0)) or None,
                 spacing_name=s.get("spacing", "uniform"),
                 clip_denoised=bool(s.clip_denoised),
                 variance=model_variance(config),
                 prediction=config.diffusion.get("prediction", "eps"),
                 self_condition=self_conditioned(config),
                 mean_from=s.mean_from)
  if s.get("sampler", "ddpm") == "ddim":
    options["eta"] = float(s.get("eta", 0.0))
    options["set_alpha_to_one"] = bool(s.get("set_alpha_to_one", True))
    options["rederive_eps"] = bool(s.get("rederive_eps", False))
    del options["mean_from"]
  return options


def sample_labels(config: ml_collections.ConfigDict, offset: int,
                  batch: int, classes: Optional[int] = None) -> np.ndarray:
  """The classes of samples offset .. offset + batch - 1: all
  ``sampling.label``, or (-1) sample j gets j mod ``classes`` (default
  model.num_classes)."""
  label = int(config.sampling.get("label", -1))
  if label >= 0:
    return np.full((batch,), label, np.int32)
  classes = classes or num_classes(config)
  return ((offset + np.arange(batch)) % classes).astype(np.int32)


def _guided(config: ml_collections.ConfigDict, model: UNet, params: Any):
  """(apply_fn, fn(offset, batch) -> the sampler's params argument) for
  the plain, class-conditional (optionally CFG) or classifier-guided
  model of ``config``."""
  ch = config.data.channels
  scale = float(config.sampling.get("guidance", 0.0))
  clf_dir = config.sampling.get("classifier", "")
  if clf_dir:
    from ddpm_jax import classifier_training  # pylint: disable=g-import-not-at-top
    clf_config, classifier, clf_params = classifier_training.load_classifier(
        clf_dir)
    if not np.array_equal(make_betas(clf_config), make_betas(config)):
      raise ConfigError(f"the classifier in {clf_dir} was trained with "
                        f"another noise schedule than this model's: train "
                        f"it with the same diffusion settings")
    if config.diffusion.get("prediction", "eps") != "eps":
      raise ConfigError("classifier guidance needs an eps-prediction model "
                        "(diffusion.prediction='eps')")
    classes = int(clf_config.classifier.num_classes)
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
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mesh = mesh or parallel.make_mesh()
  size, ch = config.data.image_size, config.data.channels
  draw = get_sampler(config.sampling.get("sampler", "ddpm"))
  betas, options = make_betas(config), sampler_options(config)
  batch = -(-int(batch_size) // mesh.size) * mesh.size
  key = jax.random.PRNGKey(seed)
  # Placed once, not once per batch (the sampler leaves placed arrays be).
  params = parallel.on_mesh(params, mesh)
  apply_fn, inputs_for = _guided(config, model, params)
  if config.sampling.get("classifier", ""):
    options["clip_denoised"] = False  # the guided apply_fn clips first
  out = []
  for i in range(int(math.ceil(num / batch))):
    x, _ = draw(inputs_for(i * batch, batch), apply_fn, betas, key,
                (batch, size, size, ch),
                offset=i * batch, mesh=mesh, **options)
    if jax.process_count() > 1:
      x = multihost_utils.process_allgather(x, tiled=True)
    out.append(np.asarray(x))
  return np.concatenate(out)[:num]


def evaluate(config: ml_collections.ConfigDict, model: UNet, params: Any,
             schedule: DiffusionSchedule) -> Dict[str, float]:
  """Bits/dim of ``params`` on ``data.eval_split`` (at most
  ``training.eval_examples`` images; all if 0), the noise from the seed."""
  tr = config.training
  batches = data.eval_batches(config, config.data.get("eval_split", "test"),
                              int(tr.get("eval_batch_size", 64)),
                              int(tr.get("eval_examples", 0)) or None)
  return evaluation.evaluate_bpd(
      params, eps_fn(model), schedule, batches,
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1),
      prediction=config.diffusion.get("prediction", "eps"),
      variance=model_variance(config),
      self_condition=self_conditioned(config))


def _write_grid(config, model, state, workdir, step,
                write: bool = True) -> str:
  n = config.sampling.num_samples
  x = generate(config, model, state.ema_params, n,
               min(n, config.sampling.batch_size), seed=config.seed)
  prefix = os.path.join(workdir, "samples", f"step_{step:08d}")
  if write:
    images.write_samples(prefix, x,
                         images.display_scale(config.data.image_size))
  return prefix + ".png"


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains (resuming from ``workdir``'s latest checkpoint), checkpoints and
  writes EMA sample grids to ``workdir/samples``.

  On a multi-host job every process runs this; each loads its own share of
  the batch, and process 0 alone writes logs, grids and the config.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  model, tx, schedule = make_model(config), make_optimizer(config), \
      make_schedule(config)
  mesh = parallel.make_mesh()
  lead = jax.process_index() == 0
  bs = int(config.training.batch_size)
  if bs % mesh.size:
    hint = (" (or JAX_NUM_CPU_DEVICES=1 for one CPU device)"
            if jax.default_backend() == "cpu" else "")
    raise ConfigError(f"config field training.batch_size={bs} is invalid: "
                      f"set --config.training.batch_size to a multiple of "
                      f"the {mesh.size} devices{hint}")
  fsdp = bool(config.get("parallel", {}).get("fsdp", False))
  manager = checkpoints.checkpoint_manager(workdir,
                                           config.training.max_to_keep)
  state = create_train_state(config, model, tx, mesh, fsdp)
  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  position = data.Position()
  restored = checkpoints.restore_latest(manager, state, set_aside=lead)
  if restored is not None:
    state = restored.state
    if restored.data_position is not None:
      position = data.Position.from_json(restored.data_position)
    else:  # written without one: the stream from the start
      print(f"warning: checkpoint {int(state.step)} has no input position; "
            f"the input stream restarts", file=sys.stderr)
    if lead:
      print(f"Resuming from {workdir} at step {int(state.step)}.")
  if lead:
    checkpoints.write_config(workdir, config)

  start, total = int(state.step), int(config.training.num_steps)
  step_fn = make_train_step(config, model, tx, mesh, state_shardings)
  schedule = jax.device_put(schedule, parallel.replicated(mesh))
  batches = parallel.prefetch_to_mesh(
      data.create_input_iter(config, position), mesh)
  writer = _summary_writer(workdir) if lead else None
  t0, last = time.time(), start
  lr_fn = learning_rate_fn(config)
  bar = tqdm(total=total, initial=start, desc="train", unit="step",
             dynamic_ncols=True, mininterval=2.0, disable=not lead)
  skip = bool(config.training.get("skip_nonfinite", False))
  skipped = 0

  def check_finite(done, metrics):
    # A step whose loss or gradient is not finite: stop before anything is
    # saved (or count it, when the config says to skip such updates).
    nonlocal skipped
    if bool(jax.device_get(metrics["finite"])):
      return
    if skip:
      skipped += 1
      return
    raise FloatingPointError(
        f"loss or gradient is not finite at step {done} (loss "
        f"{float(jax.device_get(metrics['loss']))}); stopped without saving "
        f"it, the last checkpoint is step {manager.latest_step()} (set "
        f"--config.training.skip_nonfinite=True to skip such steps)")

  def save(step):
    checkpoints.save(manager, step, state, position.to_json())

  multihost = jax.process_count() > 1
  # One process alone: SIGTERM/SIGINT set a flag checked between steps.
  # Several: JAX's preemption service catches SIGTERM on any of them and
  # all agree on the step to stop at (manager.reached_preemption).
  stop = _StopOnSignal(sigterm=not multihost)
  pending = None  # the previous step, checked once the next is dispatched
  try:
    for step in range(start, total):
      if multihost and manager.reached_preemption(step):
        stop.requested = "preemption"
      if stop.requested:
        if pending is not None:
          check_finite(*pending)
        if manager.latest_step() != step:
          save(step)
        manager.wait_until_finished()
        if lead:
          bar.write(f"{stop.requested}: saved the checkpoint of step {step} "
                    f"and stopped; run the same command to continue")
        break
      batch, position = next(batches)
      if multihost and step == start:
        # Compile first, then line the processes up: one still compiling
        # when another runs the step would time out gloo's context set-up.
        step_fn = step_fn.lower(state, batch, schedule).compile()
        parallel.host_barrier(f"train_step_compiled_{start}")
      state, metrics = step_fn(state, batch, schedule)
      done = step + 1
      if pending is not None:
        check_finite(*pending)
      pending = (done, metrics)
      if done % config.training.log_every == 0 or done == total:
        check_finite(done, metrics)
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.time() - t0
        m["img_per_s"] = (done - last) * bs / max(dt, 1e-9)
        m["steps_per_s"] = (done - last) / max(dt, 1e-9)
        # The rate the update of step `done` used (optax counts from 0).
        m["learning_rate"] = float(lr_fn(done - 1))
        m["skipped_steps"] = float(skipped)
        del m["finite"]
        t0, last = time.time(), done
        bar.set_postfix(loss=f"{m['loss']:.4f}",
                        img_s=f"{m['img_per_s']:.0f}")
        if writer is not None:
          for k, v in m.items():
            writer.add_scalar(f"train/{k}", v, done)
        if lead:  # one line per log_every steps on stdout, beside the bar
          bar.write(f"step {done}: loss {m['loss']:.5f} grad_norm "
                    f"{m['grad_norm']:.4f} lr {m['learning_rate']:.3g} "
                    f"steps/s {m['steps_per_s']:.2f} img/s "
                    f"{m['img_per_s']:.1f}")
      bar.update(1)
      if done % config.training.checkpoint_every == 0 or done == total:
        check_finite(done, metrics)
        save(done)
      every = config.training.get("eval_every", 0)
      if every and (done % every == 0 or done == total):
        result = evaluate(config, model, state.ema_params, schedule)
        if writer is not None:
          for k, v in result.items():
            writer.add_scalar(f"eval/bpd_{k}" if k in evaluation.PARTS else
                              f"eval/{k}", v, done)
        if lead:
          bar.write(f"step {done}: eval bits/dim {result['total']:.4f} on "
                    f"{result['num_examples']} images of "
                    f"{config.data.get('eval_split', 'test')}")
      every = config.training.get("quality_every", 0)
      if every and (done % every == 0 or done == total):
        from ddpm_jax import sample_quality  # pylint: disable=g-import-not-at-top
        result = sample_quality.score(
            config, model, state.ema_params,
            config.training.get("quality_metric", "digits"),
            int(config.training.get("quality_samples", 297)),
            seed=config.seed, batch_size=config.sampling.batch_size)
        if writer is not None:
          for k, v in result.items():
            if isinstance(v, float):
              writer.add_scalar(f"eval/{k}", v, done)
        if lead:
          bar.write(f"step {done}: sample quality " + " ".join(
              f"{k} {v:.4g}" for k, v in result.items()
              if isinstance(v, float)))
      every = config.training.sample_every
      if (every and done % every == 0) or done == total:
        # Every process samples (the parameters may span processes); the
        # first one writes.
        path = _write_grid(config, model, state, workdir, done, lead)
        if lead:
          bar.write(f"step {done}: wrote {path}")
  finally:
    bar.close()
    stop.restore()
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()
  return state


class _StopOnSignal:
  """Turns SIGTERM (a TPU preemption notice, a scheduler's stop) and SIGINT
  into a request that the training loop honours between steps by saving a
  checkpoint of the current step and returning."""

  def __init__(self, sigterm: bool = True):
    self.requested = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT)[0 if sigterm else 1:]:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _summary_writer(workdir: str):
  """A TensorBoard writer for ``workdir/tensorboard``, or None without
  tensorboardX."""
  # tensorboardX imports torch, when installed, only to accept its tensors
  # (1.2 s at every start on the CI machine); this writer is given
  # Python floats, so torch is hidden while it loads.
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(os.path.join(workdir, "tensorboard"))
