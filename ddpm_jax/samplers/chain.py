"""The reverse chain as one ``lax.scan``: the driver every sampler shares.

A sampler supplies the order of its step indices, the training timestep
the network sees at each, and its update (x_t, index, network output) ->
(x_prev, x0_hat); :func:`run_chain` calls the network, feeds back the
previous x0_hat when the model is self-conditioned, and records the
trajectory every k steps. The loop body is traced and compiled once,
whatever the number of steps.

Every example has its own key, ``fold_in(key, offset + b)`` for row b
(:class:`ExampleNoise`): its x_T and the noise of each step come from that
key alone, so sample j of a request is the same whatever the batch size or
the number of devices the batch is split over.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from ddpm_jax.diffusion import ApplyFn
from ddpm_jax.samplers import scan_progress
from ddpm_jax.self_conditioning import conditioned_input

Array = jnp.ndarray
# (x_t, step index, the network's float32 output) -> (x_prev, x0_hat).
UpdateFn = Callable[[Array, Array, Array], Tuple[Array, Array]]


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

  def _draw(self, fn) -> Array:
    x = jax.vmap(lambda k: jax.random.normal(fn(k), self._row_shape,
                                             jnp.float32))(self._keys)
    if self._sharding is not None:
      x = jax.lax.with_sharding_constraint(x, self._sharding)
    return x

  def initial(self) -> Array:
    """x_T ~ N(0, I)."""
    return self._draw(lambda k: jax.random.split(k)[0])

  def at(self, i: Any) -> Array:
    """The z of step index ``i``."""
    return self._draw(lambda k: jax.random.fold_in(jax.random.split(k)[1],
                                                   i))


def run_chain(params: Any, apply_fn: ApplyFn, x_init: Array, index: Array,
              timestep: Callable[[Array], Array], update: UpdateFn, *,
              return_every: int = 0, self_condition: bool = False,
              progress_every: int = 0) -> Tuple[Array, Dict[str, Array]]:
  """Runs ``update`` at each step index of ``index`` (int32 [S], in scan
  order) from ``x_init`` in one ``lax.scan``.

  ``timestep(i)`` is the training timestep the network sees at index i.
  With ``self_condition`` the network also takes the x0_hat of the previous
  step (zeros at the first). With ``return_every=k`` (k must divide S) the
  trajectory is returned too: ``{'x_t': [S/k, ...], 'x0': [S/k, ...],
  't': [S/k]}``, the state after every k-th step, the x0_hat of that step
  and its training timestep. With ``progress_every=K`` the host hears of
  every K-th step done (:mod:`.scan_progress`). Returns (x_0, trajectory;
  empty without ``return_every``).
  """
  batch = x_init.shape[0]
  steps = index.shape[0]

  def step(carry, xs):
    i = scan_progress.unpack(xs, steps, progress_every)
    x, x0_prev = carry
    t_vec = jnp.full((batch,), timestep(i), jnp.int32)
    x_in = conditioned_input(x, x0_prev) if self_condition else x
    out = apply_fn(params, x_in, t_vec, None).astype(jnp.float32)
    x_prev, x0 = update(x, i, out)
    return (x_prev, x0), x0

  init = (x_init, jnp.zeros_like(x_init))
  xs = scan_progress.with_positions(index, progress_every)
  if not return_every:
    (x, _), _ = jax.lax.scan(lambda c, i: (step(c, i)[0], None), init, xs)
    return x, {}
  if steps % return_every:
    raise ValueError(f"return_every={return_every} must divide the "
                     f"{steps} steps")

  def chunk(carry, idx):
    carry, x0s = jax.lax.scan(step, carry, idx)
    last = jax.tree_util.tree_leaves(idx)[0][-1]
    return carry, (carry[0], x0s[-1], timestep(last))

  (x, _), (xs, x0s, ts) = jax.lax.scan(
      chunk, init, jax.tree_util.tree_map(
          lambda a: a.reshape(steps // return_every, return_every), xs))
  return x, {"x_t": xs, "x0": x0s, "t": ts}
