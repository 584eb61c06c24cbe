"""The optimizer and schedule facts the training outcome rests on, checked
without a reference library: global-norm clipping, the warmup's learning
rates, and the posterior mean coefficients of eq. 7."""

import jax.numpy as jnp
import numpy as np

from configs import digits
from ddpm_jax import from_config, schedules


def optimizer_config(**optim):
  config = digits.get_config()
  for key, value in optim.items():
    config.optim[key] = value
  return config


def test_clipping_is_by_the_global_norm():
  # Adam's first update is g / (|g| + eps) elementwise (bias-corrected
  # moments); with eps = 1 it shows the gradient's scale after clipping.
  # Global norm of g: 5, clipped to 1: g / 5. Clipping each array to norm
  # 1, or each value to [-1, 1], gives other updates.
  tx = from_config.make_optimizer(optimizer_config(
      grad_clip=1.0, eps=1.0, learning_rate=1.0, warmup_steps=0))
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  clipped = {k: np.asarray(v) / 5.0 for k, v in grads.items()}
  for k in grads:
    # 1e-5: Adam's float32 moments and bias corrections ((1 - beta2) and
    # 1 - beta2^1) round at about 3e-6 relative.
    np.testing.assert_allclose(
        updates[k], -clipped[k] / (np.abs(clipped[k]) + 1.0), rtol=1e-5)


def test_learning_rate_warms_up_linearly_from_zero():
  config = optimizer_config(learning_rate=2e-4, warmup_steps=5000)
  lr = from_config.learning_rate_fn(config)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 1, 2500, 5000, 5001, 800000)],
      [0.0, 2e-4 / 5000, 1e-4, 2e-4, 2e-4, 2e-4], rtol=1e-6)
  # optax counts updates from 0: the first update uses lr(0) = 0, as the
  # original's global_step 0 does; the second lr(1).
  tx = from_config.make_optimizer(config)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  state = tx.init(params)
  first, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(first["w"], np.zeros(3))
  second, _ = tx.update(grads, state, params)
  # Adam's bias-corrected direction is about -sign(g) here.
  np.testing.assert_allclose(second["w"], -np.sign(grads["w"]) * 2e-4 / 5000,
                             rtol=1e-4)


def test_posterior_mean_coefficients_are_eq_7():
  # q(x_{t-1} | x_t, x_0) has mean coef1 * x_0 + coef2 * x_t (eq. 7):
  # coef1 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),
  # coef2 = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t), abar_0 = 1.
  betas = schedules.get_betas("linear", 1000)
  tab = schedules.make_schedule(betas)
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  np.testing.assert_allclose(
      np.asarray(tab.posterior_mean_coef1, np.float64),
      np.sqrt(abar_prev) * betas / (1.0 - abar), rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(tab.posterior_mean_coef2, np.float64),
      np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar), rtol=1e-6)
  # At t = 1 the mean is x_0 exactly: coef1 = 1, coef2 = 0.
  assert float(tab.posterior_mean_coef1[0]) == 1.0
  assert float(tab.posterior_mean_coef2[0]) == 0.0
