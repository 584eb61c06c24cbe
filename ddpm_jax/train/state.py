"""The train state: step, base rng key, parameters, their EMA and the
optimizer state, created from the config's seed (all checkpointed)."""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ddpm_jax import compilation, parallel
from ddpm_jax.from_config import self_conditioned
from ddpm_jax.models.unet import UNet


class TrainState(flax.struct.PyTreeNode):
  """Step, base rng key, parameters, their EMA and the optimizer state (all
  checkpointed)."""
  step: jnp.ndarray
  rng: jnp.ndarray  # uint32[2]; step s uses fold_in(rng, s)
  params: Any
  ema_params: Any
  opt_state: Any


def init_fn(config: ml_collections.ConfigDict, model: UNet,
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
  init = init_fn(config, model, tx)
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
  shapes = jax.eval_shape(init_fn(config, model, tx))
  if mesh is None:
    mesh = parallel.make_mesh(jax.local_devices()[:1])
  shardings = parallel.state_sharding(shapes, mesh, fsdp)
  return jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes, shardings)
