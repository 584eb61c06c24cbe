"""Self-conditioning: the loss feeds back a stop-gradient x_0 estimate on
half the steps, and the sampler passes each step's x_0 to the next."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, losses, schedules, self_conditioning
from ddpm_jax.sampling import sample_with_noise
from tests.reference_models import assert_close


def toy_apply(params, x_in, t, rng=None):
  """Output depends on both halves of the input: estimate and x_t."""
  del rng
  c = x_in.shape[-1] // 2
  est, x_t = x_in[..., :c], x_in[..., c:]
  return jnp.tanh(params["a"] * x_t + params["b"] * est +
                  t.reshape(-1, 1, 1, 1) / 100.0)


PARAMS = {"a": jnp.float32(0.7), "b": jnp.float32(-0.4)}
SCHED = schedules.make_schedule(schedules.get_betas("linear", 20))


def test_loss_uses_the_first_pass_estimate_on_half_the_batches():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.uniform(k[0], (3, 4, 4, 1), minval=-1, maxval=1)
  t = jnp.asarray([0, 7, 19])
  noise = jax.random.normal(k[1], x0.shape)
  x_t = diffusion.q_sample(SCHED, x0, t, noise)
  first = toy_apply(PARAMS, self_conditioning.conditioned_input(x_t, None), t)
  est = diffusion.predict_x0_from_eps(SCHED, x_t, t, first)
  with_est = losses.losses_from_output(
      SCHED, toy_apply(PARAMS, jnp.concatenate([est, x_t], -1), t), x0, t,
      noise)
  without = losses.losses_from_output(SCHED, first, x0, t, noise)
  seen = set()
  for i in range(16):
    got = self_conditioning.loss_per_example(
        PARAMS, toy_apply, SCHED, x0, t, noise, None,
        jax.random.PRNGKey(i))
    if np.allclose(got, with_est, rtol=1e-6):
      seen.add("estimate")
    else:
      assert_close(got, without, rtol=1e-6)
      seen.add("zeros")
  assert seen == {"estimate", "zeros"}
  # The estimate's gradient is stopped: only the second pass trains.
  def loss_b(b, key):
    return jnp.sum(self_conditioning.loss_per_example(
        {"a": PARAMS["a"], "b": b}, toy_apply, SCHED, x0, t, noise, None,
        key))
  for i in range(4):
    g = jax.grad(loss_b)(PARAMS["b"], jax.random.PRNGKey(i))
    assert np.isfinite(float(g))


def test_sampler_feeds_each_steps_x0_to_the_next():
  k = jax.random.split(jax.random.PRNGKey(1), 2)
  x_T = jax.random.normal(k[0], (2, 4, 4, 1))
  noise = jax.random.normal(k[1], (20,) + x_T.shape)
  got = sample_with_noise(PARAMS, toy_apply, SCHED, x_T, noise,
                          variance="fixedlarge", self_condition=True)
  x, est = x_T, jnp.zeros_like(x_T)
  for t in range(19, -1, -1):
    out = toy_apply(PARAMS, jnp.concatenate([est, x], -1),
                    jnp.full((2,), t))
    x, est = diffusion.p_step_from_output(SCHED, x, t, out, noise[t],
                                          variance="fixedlarge")
  assert_close(got, x, rtol=1e-5, atol=1e-6)


def test_self_conditioned_unet_trains_and_samples():
  from ddpm_jax import data, training
  from ddpm_jax.models.unet import eps_fn
  from tests.tiny_configs import tiny_digits_config
  config = tiny_digits_config(num_timesteps=10, batch_size=4, num_samples=2)
  config.model.self_condition = True
  model, tx = training.make_model(config), training.make_optimizer(config)
  schedule = training.make_schedule(config)
  state = training.create_train_state(config, model, tx)
  assert state.params["conv_in"]["kernel"].shape[2] == 2  # 2C inputs
  step = jax.jit(functools.partial(
      training.train_step, apply_fn=eps_fn(model), tx=tx, ema_decay=0.5,
      loss_options=training.objective_options(config), self_condition=True))
  batches = data.create_input_iter(config)
  for _ in range(2):
    state, metrics = step(state, jnp.asarray(next(batches)[0]), schedule)
    assert bool(metrics["finite"])
  x = training.generate(config, model, state.ema_params, schedule, 2, 2, 0)
  assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))
