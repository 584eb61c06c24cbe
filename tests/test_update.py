"""The update half of the train step (training.apply_gradients), on a
two-array parameter tree with plain SGD so each value can be written out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax import training


def state_and_grads(grad_b):
  params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
  ema = {"a": jnp.array([0.0, 0.0]), "b": jnp.array([[1.0]])}
  tx = optax.sgd(0.1)
  state = training.TrainState(
      step=jnp.array(7, jnp.int32), rng=jax.random.PRNGKey(0),
      params=params, ema_params=ema, opt_state=tx.init(params))
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[grad_b]])}
  return state, grads, tx


def test_sgd_step_ema_and_metrics():
  state, grads, tx = state_and_grads(12.0)
  new, metrics = jax.jit(lambda s, g: training.apply_gradients(
      s, g, jnp.float32(0.25), tx=tx, ema_decay=0.9))(state, grads)
  np.testing.assert_allclose(new.params["a"], [0.7, -2.4], rtol=1e-6)
  np.testing.assert_allclose(new.params["b"], [[-0.7]], rtol=1e-6)
  # EMA of the new parameters: 0.9 * ema + 0.1 * params.
  np.testing.assert_allclose(new.ema_params["a"], [0.07, -0.24], rtol=1e-6)
  np.testing.assert_allclose(new.ema_params["b"], [[0.83]], rtol=1e-6)
  assert int(new.step) == 8
  np.testing.assert_array_equal(new.rng, state.rng)
  # Global norm over every array: sqrt(9 + 16 + 144) = 13.
  assert float(metrics["grad_norm"]) == np.float32(13.0)
  assert float(metrics["loss"]) == 0.25 and bool(metrics["finite"])


def test_nonfinite_gradient_is_skipped_only_when_asked():
  state, grads, tx = state_and_grads(np.nan)
  kept, metrics = training.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9,
      skip_nonfinite=True)
  assert not bool(metrics["finite"]) and int(kept.step) == 8
  for new, old in zip(jax.tree_util.tree_leaves(
      (kept.params, kept.ema_params, kept.opt_state)),
      jax.tree_util.tree_leaves(
          (state.params, state.ema_params, state.opt_state))):
    np.testing.assert_array_equal(new, old)
  moved, _ = training.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9)
  assert np.isnan(moved.params["b"]).all()
  np.testing.assert_allclose(moved.params["a"], [0.7, -2.4], rtol=1e-6)


def test_ema_update_is_the_weighted_average():
  out = training.ema_update({"w": jnp.array([2.0])}, {"w": jnp.array([4.0])},
                            0.75)
  np.testing.assert_allclose(out["w"], [2.5], rtol=1e-7)
