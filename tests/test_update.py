"""The update half of the train step (train.apply_gradients), on a
two-array parameter tree with plain SGD so each value can be written out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax import train


def state_and_grads(grad_b):
  params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
  ema = {"a": jnp.array([0.0, 0.0]), "b": jnp.array([[1.0]])}
  tx = optax.sgd(0.1)
  state = train.TrainState(
      step=jnp.array(7, jnp.int32), rng=jax.random.PRNGKey(0),
      params=params, ema_params=ema, opt_state=tx.init(params))
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[grad_b]])}
  return state, grads, tx


def test_sgd_step_ema_and_metrics():
  state, grads, tx = state_and_grads(12.0)
  new, metrics = jax.jit(lambda s, g: train.apply_gradients(
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
  kept, metrics = train.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9,
      skip_nonfinite=True)
  assert not bool(metrics["finite"]) and int(kept.step) == 8
  for new, old in zip(jax.tree_util.tree_leaves(
      (kept.params, kept.ema_params, kept.opt_state)),
      jax.tree_util.tree_leaves(
          (state.params, state.ema_params, state.opt_state))):
    np.testing.assert_array_equal(new, old)
  moved, _ = train.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9)
  assert np.isnan(moved.params["b"]).all()
  np.testing.assert_allclose(moved.params["a"], [0.7, -2.4], rtol=1e-6)


def test_ema_update_is_the_weighted_average():
  out = train.ema_update({"w": jnp.array([2.0])}, {"w": jnp.array([4.0])},
                         0.75)
  np.testing.assert_allclose(out["w"], [2.5], rtol=1e-7)


# The whole step (train.train_step) with a toy network whose output
# depends on x_t and t, so that the loss sees which t, noise and x_t the
# step drew (a fresh U-Net outputs exactly zero: its last convolution starts
# at zero, and then the loss is mean(noise^2) whatever t is).

T_TOY = 4


def toy_net(params, x_t, t, dropout_rng=None):
  del dropout_rng
  tt = jnp.asarray(t, jnp.float32).reshape(-1, 1, 1, 1)
  return jnp.tanh(params["w"] * x_t + params["b"] * (tt + 1.0))


def toy_step_setup(batch=16):
  from ddpm_jax import schedules
  betas = np.linspace(0.1, 0.6, T_TOY)
  sched = schedules.make_schedule(betas)
  params = {"w": jnp.array([0.7, -0.3]), "b": jnp.array([0.2, 0.5])}
  tx = optax.sgd(1e-3)
  state = train.TrainState(
      step=jnp.array(0, jnp.int32), rng=jax.random.PRNGKey(42),
      params=params, ema_params=params, opt_state=tx.init(params))
  x0 = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (batch, 3, 3, 2)).astype(np.float32))
  return betas, sched, state, x0, tx


def expected_loss(betas, params, x0, rng, step):
  """L_simple of step ``step`` written out: its key is fold_in(rng, step);
  t ~ U{0..T-1} and the noise come from the loss half of that key."""
  key_loss, _ = jax.random.split(jax.random.fold_in(rng, step))
  key_t, key_n = jax.random.split(key_loss)
  t = np.asarray(jax.random.randint(key_t, (x0.shape[0],), 0, T_TOY))
  noise = np.asarray(jax.random.normal(key_n, x0.shape, jnp.float32))
  abar = np.cumprod(1.0 - betas)[t].reshape(-1, 1, 1, 1)
  x_t = np.sqrt(abar) * np.asarray(x0) + np.sqrt(1.0 - abar) * noise
  out = np.asarray(toy_net(params, jnp.asarray(x_t, jnp.float32), t))
  return float(np.mean((noise - out)**2)), t


def test_each_step_draws_from_its_own_key_and_every_t():
  betas, sched, state, x0, tx = toy_step_setup()
  seen = []

  def spy(params, x_t, t, dropout_rng=None):
    jax.debug.callback(lambda t: seen.append(np.asarray(t).copy()), t)
    return toy_net(params, x_t, t)

  step = jax.jit(lambda s, x, sc: train.train_step(
      s, x, sc, apply_fn=spy, tx=tx, ema_decay=0.5))
  losses_seen, ts = [], []
  for k in range(12):
    params = state.params
    state, metrics = step(state, x0, sched)
    jax.effects_barrier()
    want, t = expected_loss(betas, params, x0, state.rng, k)
    # Step k's loss is the one of fold_in(rng, k): not of step 0's key.
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5), k
    np.testing.assert_array_equal(seen[-1], t)
    losses_seen.append(float(metrics["loss"]))
    ts.append(t)
  # Consecutive steps draw different t (and noise: different losses).
  assert all(not np.array_equal(a, b) for a, b in zip(ts, ts[1:]))
  assert len(set(losses_seen)) == len(losses_seen)
  # Over 12 x 16 draws every timestep occurs, t = 0 and t = T - 1 included.
  assert set(np.concatenate(ts).tolist()) == set(range(T_TOY))


def test_step_at_a_restored_counter_uses_that_steps_key():
  # A resumed run at step 7 draws what step 7 of the uninterrupted run did.
  betas, sched, state, x0, tx = toy_step_setup()
  state = state.replace(step=jnp.array(7, jnp.int32))
  _, metrics = train.train_step(state, x0, sched, apply_fn=toy_net, tx=tx,
                                ema_decay=0.5)
  want, _ = expected_loss(betas, state.params, x0, state.rng, 7)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  step0, _ = expected_loss(betas, state.params, x0, state.rng, 0)
  assert abs(want - step0) > 1e-3  # the check above can tell them apart


def test_nonfinite_updated_state_is_skipped_only_when_asked():
  # Finite loss and gradient, but an EMA that is already NaN (as a damaged
  # checkpoint's could be): with skip_nonfinite the whole update is
  # skipped and `finite` says so; without, it goes through.
  state, grads, tx = state_and_grads(12.0)
  state = state.replace(ema_params={"a": jnp.array([np.nan, 0.0]),
                                    "b": jnp.array([[1.0]])})
  kept, metrics = train.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9,
      skip_nonfinite=True)
  assert not bool(metrics["finite"]) and int(kept.step) == 8
  np.testing.assert_array_equal(kept.params["a"], state.params["a"])
  moved, metrics = train.apply_gradients(
      state, grads, jnp.float32(0.25), tx=tx, ema_decay=0.9)
  assert bool(metrics["finite"])  # loss and gradient only
  np.testing.assert_allclose(moved.params["a"], [0.7, -2.4], rtol=1e-6)
