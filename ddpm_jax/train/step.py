"""One training step (Algorithm 1): draw t and the noise from the step's
key, differentiate the objective, apply the optimizer and the EMA; and
:func:`make_train_step`, the step jitted over a device mesh, and
:func:`make_multi_step`, several steps in one jitted call."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ddpm_jax import guidance, losses, parallel, self_conditioning
from ddpm_jax.from_config import (num_classes, objective_options,
                                  self_conditioned)
from ddpm_jax.models.unet import UNet, eps_fn
from ddpm_jax.schedules import DiffusionSchedule
from ddpm_jax.train.grads import (flat_grads_pay, flat_reduced_grads,
                                  slice_value_and_grad, step_conv_backward,
                                  step_microbatch_size)
from ddpm_jax.train.state import TrainState


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
  are summed as one flat buffer (:func:`flat_reduced_grads`).
  ``microbatch`` > 0 (one device, or with ``grad_mesh``): each device
  takes its examples ``microbatch`` at a time and accumulates the gradient
  (:func:`slice_value_and_grad`); the same gradient up to the order of
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
    loss, grads = flat_reduced_grads(per_example, grad_mesh, state.params,
                                     shared, (batch, t, noise, labels),
                                     microbatch)
  elif microbatch:
    loss, grads = slice_value_and_grad(
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
  With ``skip_nonfinite`` a step whose loss, gradient or updated params,
  EMA or optimizer state is not finite leaves params, EMA and optimizer
  state unchanged (the step counter still advances), and ``finite`` says
  so."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = ema_update(state.ema_params, params, ema_decay)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    for leaf in jax.tree_util.tree_leaves((params, ema, opt_state)):
      if jnp.issubdtype(leaf.dtype, jnp.inexact):
        finite &= jnp.all(jnp.isfinite(leaf))
  new_state = state.replace(step=state.step + 1, params=params,
                            ema_params=ema, opt_state=opt_state)
  if skip_nonfinite:
    new_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new, old), new_state,
        state.replace(step=state.step + 1))
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def _bound_step(config: ml_collections.ConfigDict, model: UNet,
                tx: optax.GradientTransformation, mesh: Mesh,
                state_shardings: Any, in_loop: bool = False):
  """:func:`train_step` with everything but (state, batch, schedule)
  bound from ``config`` (see :func:`make_train_step`); ``in_loop``: it
  runs inside :func:`multi_step`'s loop."""
  flat = flat_grads_pay(mesh, state_shardings)
  micro = step_microbatch_size(config, mesh, state_shardings)
  backward = step_conv_backward(model, micro, mesh, in_loop)
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
  return fn


def make_train_step(config: ml_collections.ConfigDict, model: UNet,
                    tx: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: Any):
  """:func:`train_step` jitted over ``mesh``: the batch split over the data
  axis, the state in ``state_shardings`` and donated, metrics replicated.
  Call it as ``step(state, batch, schedule)``.

  With microbatches (:func:`microbatch_size`) on CPU devices, a U-Net
  whose ``conv_backward`` is 'auto' is differentiated by 'matmul': XLA's own
  kernel gradient inside the ``lax.scan`` of the passes is much slower on
  the CPU than 'matmul' there (docs/benchmarks.md, 'Measurements behind
  design choices'). Same parameters, same function."""
  rep = parallel.replicated(mesh)
  return jax.jit(_bound_step(config, model, tx, mesh, state_shardings),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh),
                               rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def multi_step(state: TrainState, batches: Tuple[Any, ...], n: jnp.ndarray,
               schedule: DiffusionSchedule, *, step_fn
               ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """The first ``n`` of ``batches`` (a tuple of k batches, 1 <= n <= k),
  one ``step_fn(state, batch, schedule)`` each, in one ``lax.fori_loop``.
  Returns the state and each metric with a leading axis of k: row i is
  step i's (rows from n on are zeros). ``n`` is traced, so one program
  runs every chunk length."""
  k = len(batches)
  stacked = jax.tree_util.tree_map(lambda *b: jnp.stack(b), *batches)
  # Jitted so that the loop body reuses the trace that finds the metrics'
  # shapes here: traced once, not twice (XLA inlines the call).
  step_fn = jax.jit(step_fn)
  shapes = jax.eval_shape(step_fn, state, batches[0], schedule)[1]
  rows = jax.tree_util.tree_map(
      lambda s: jnp.zeros((k,) + s.shape, s.dtype), shapes)

  def body(i, carry):
    state, rows = carry
    batch = jax.tree_util.tree_map(
        lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False),
        stacked)
    state, metrics = step_fn(state, batch, schedule)
    return state, jax.tree_util.tree_map(lambda r, m: r.at[i].set(m), rows,
                                         metrics)

  return jax.lax.fori_loop(0, n, body, (state, rows))


def make_multi_step(config: ml_collections.ConfigDict, model: UNet,
                    tx: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: Any, k: int):
  """:func:`multi_step` of k batches, jitted over ``mesh`` as
  :func:`make_train_step` jits one step (the state donated). Call it as
  ``steps(state, (batch_1, ..., batch_k), n, schedule)``: up to k train
  steps for one dispatch, for models whose step is shorter than the cost
  of launching it (``training.steps_per_call``)."""
  rep = parallel.replicated(mesh)
  fn = functools.partial(multi_step, step_fn=_bound_step(
      config, model, tx, mesh, state_shardings, in_loop=True))
  return jax.jit(fn,
                 in_shardings=(state_shardings,
                               (parallel.batch_sharding(mesh),) * int(k),
                               rep, rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))
