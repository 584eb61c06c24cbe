"""How the train step computes its gradient: in one pass, in microbatches
inside a ``lax.scan``, or per device with one flat all-reduce; and which
convolution backward the step runs."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from ddpm_jax import parallel
from ddpm_jax.from_config import ConfigError
from ddpm_jax.models import conv
from ddpm_jax.models.unet import dropout_over_batch_slice


def slice_value_and_grad(per_example, params: Any, shared: Any,
                         batch_args: Tuple[Any, ...], *, total: int,
                         first_row: Any, microbatch: int):
  """(sum of the losses of the examples ``batch_args`` hold / ``total``,
  its gradient): rows ``first_row`` onwards of a batch of ``total`` rows
  (``None`` entries of ``batch_args`` stay None).

  With ``0 < microbatch`` < the rows held, the rows go through the U-Net
  ``microbatch`` at a time in one ``lax.scan`` and the gradients are
  summed. On the CPU, where a pass over a few images keeps its
  activations in cache, this is the fastest way through a large batch
  (docs/benchmarks.md, 'Measurements behind design choices'). Dropout
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


def flat_reduced_grads(per_example, mesh: Mesh, params: Any, shared: Any,
                       batch_args: Tuple[Any, ...], microbatch: int = 0):
  """(mean loss, its gradient) over a batch split on ``mesh``'s data axis:
  each device differentiates the sum of its examples' losses / the batch
  size (in passes of ``microbatch`` examples if > 0), and one all-reduce
  sums the gradients raveled into one buffer.

  XLA's own placement all-reduces every parameter's gradient apart; the CPU
  backend's in-process collectives then meet once per array, which for
  the digits U-Net's 208 arrays is several times slower than one
  all-reduce of the flat buffer (docs/benchmarks.md, 'Measurements behind
  design choices'). The dropout masks are
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
    loss, grads = slice_value_and_grad(
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


def flat_grads_pay(mesh: Mesh, state_shardings: Any) -> bool:
  """Whether the train step sums its gradients as one flat buffer
  (:func:`flat_reduced_grads`): on CPU devices, with the state replicated.
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
  device's examples in one pass); see :func:`slice_value_and_grad`.

  ``training.microbatch_size`` -1 (auto): on CPU devices, the largest
  divisor of the examples per device that keeps one full-resolution
  activation of the pass within ``AUTO_MICROBATCH_BYTES`` (at least 1;
  0 when all of them fit); elsewhere 0 (GPUs and TPUs want large passes).
  On 2 CPU cores: tiny32 (128 KiB per image) in passes of 2, faster than
  in one pass of 64; tiny8 (8 KiB per image, 32 per device) in one pass,
  where passes of 8 were slower (docs/benchmarks.md, 'Measurements behind
  design choices'). ``flat``: whether the step differentiates per device
  (one device, or :func:`flat_grads_pay`); a positive size needs it."""
  size = int(config.training.microbatch_size)
  rows = int(config.training.batch_size) // mesh.size
  per_device = mesh.size == 1 or flat
  if size == -1:
    if not per_device or any(d.platform != "cpu" for d in mesh.devices.flat):
      return 0
    m = config.model
    per_example = (config.data.image_size**2 * m.ch * m.ch_mult[0] *
                   jnp.dtype(m.dtype).itemsize)
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
                         flat_grads_pay(mesh, state_shardings))


def step_platform(mesh: Mesh) -> str:
  """The platform of ``mesh``'s devices ('cpu', 'gpu', 'tpu')."""
  return next(iter(mesh.devices.flat)).platform


def step_conv_backward(model: Any, micro: int, mesh: Mesh,
                       in_loop: bool = False) -> Optional[str]:
  """The ``conv_backward`` the train step differentiates ``model`` with:
  the model's own, with 'auto' resolved by
  :func:`ddpm_jax.models.conv.resolve_backward` where the layers run
  inside a loop: the step is microbatched (``micro`` > 0, a ``lax.scan``)
  or runs in a loop of steps (``in_loop``, ``training.steps_per_call``);
  None for a model without the field."""
  own = getattr(model, "conv_backward", None)
  if own is None or not (micro or in_loop):
    return own
  return conv.resolve_backward(own, in_scan=True,
                               platform=step_platform(mesh))


def step_backward_plan(model: Any, micro: int, mesh: Mesh,
                       in_loop: bool = False) -> Optional[Dict[str, str]]:
  """{layer kind: backward} that the train step runs for ``model``
  (:func:`ddpm_jax.models.conv.backward_plan`); None for a model without
  ``conv_backward``."""
  backward = step_conv_backward(model, micro, mesh, in_loop)
  if backward is None:
    return None
  return conv.backward_plan(backward, in_scan=bool(micro) or in_loop,
                            platform=step_platform(mesh))
