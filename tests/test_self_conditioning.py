"""Self-conditioning: the loss feeds back a stop-gradient x_0 estimate on
half the steps, and the sampler passes each step's x_0 to the next."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, losses, schedules, self_conditioning
from ddpm_jax.samplers.ancestral import sample_with_noise
from tests.reference_models import (assert_close, make_torch_model,
                                    nhwc, toy_apply_jax, toy_weights)


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


@pytest.mark.slow
def test_self_conditioned_unet_trains_and_samples():
  from ddpm_jax import data, from_config, train
  from ddpm_jax.evaluators import bpd
  from ddpm_jax.samplers import generate
  from ddpm_jax.models.unet import eps_fn
  from tests.tiny_configs import tiny_digits_config
  config = tiny_digits_config(num_timesteps=10, batch_size=4, num_samples=2,
                              one_level=True)
  config.model.self_condition = True
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  schedule = from_config.make_schedule(config)
  state = train.create_train_state(config, model, tx)
  assert state.params["conv_in"]["kernel"].shape[2] == 2  # 2C inputs
  step = jax.jit(functools.partial(
      train.train_step, apply_fn=eps_fn(model), tx=tx, ema_decay=0.5,
      loss_options=from_config.objective_options(config), self_condition=True))
  batches = data.create_input_iter(config)
  for _ in range(2):
    state, metrics = step(state, jnp.asarray(next(batches)[0]), schedule)
    assert bool(metrics["finite"])
  x = generate.generate(config, model, state.ema_params, 2, 2, 0)
  assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))
  config.training.eval_examples = 4
  config.training.eval_batch_size = 4
  bpd = bpd.evaluate(config, model, state.ema_params, schedule)
  assert bpd["num_examples"] == 4 and np.isfinite(bpd["total"])


def test_bound_of_a_self_conditioned_model_uses_a_first_pass_estimate():
  from ddpm_jax.evaluators import bpd
  x0 = bpd.quantize(np.random.default_rng(2).uniform(
      -1, 1, (3, 4, 4, 1)).astype(np.float32))
  key = jax.random.PRNGKey(5)
  got = bpd.bpd_terms(PARAMS, toy_apply, SCHED, jnp.asarray(x0), key,
                      variance="fixedlarge", self_condition=True)
  for t in range(SCHED.num_timesteps):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
    t_vec = jnp.full((3,), t)
    x_t = diffusion.q_sample(SCHED, x0, t_vec, noise)
    first = toy_apply(PARAMS, jnp.concatenate([jnp.zeros_like(x_t), x_t],
                                              -1), t_vec)
    est = diffusion.predict_x0_from_eps(SCHED, x_t, t_vec, first)
    out = toy_apply(PARAMS, jnp.concatenate([est, x_t], -1), t_vec)
    want = losses.vlb_terms(SCHED, out, x0, x_t, t_vec, variance="fixedlarge",
                            clip_denoised=True)
    assert_close(got["terms"][t], want, rtol=1e-5, err_msg=f"t={t}")


# lucidrains' GaussianDiffusion with a self-conditioned toy model (the same
# weights in JAX and PyTorch; tests/reference_models.py).
T = 1000
C = 3
TIMES = [0, 1, 2, 50, 300, 700, 998, 999]


@pytest.fixture(scope="module")
def sched1000():
  return schedules.make_schedule(schedules.get_betas("linear", T))


def lucidrains_self_cond(torch, objective):
  ddp = pytest.importorskip("denoising_diffusion_pytorch")
  weights = toy_weights(C, seed=3, self_condition=True)
  model = make_torch_model(torch, weights, C)
  assert model.self_condition
  ref = ddp.GaussianDiffusion(model, image_size=6, timesteps=T,
                              beta_schedule="linear", auto_normalize=False,
                              objective=objective)
  return ref, {k: jnp.asarray(v) for k, v in weights.items()}


@pytest.mark.parametrize("objective,prediction", [
    ("pred_noise", "eps"), ("pred_x0", "x0"), ("pred_v", "v")])
@pytest.mark.parametrize("coin", [0.0, 0.9])
def test_loss_matches_lucidrains(torch, sched1000, monkeypatch, objective,
                                 prediction, coin):
  """lucidrains feeds the estimate back when random() < 0.5: the coin is
  pinned on the PyTorch side and given as ``use_estimate`` on ours."""
  import denoising_diffusion_pytorch.denoising_diffusion_pytorch as mod
  monkeypatch.setattr(mod, "random", lambda: coin)
  ref, params = lucidrains_self_cond(torch, objective)
  g = torch.Generator().manual_seed(0)
  x0 = torch.rand((len(TIMES), C, 6, 6), generator=g) * 2 - 1
  noise = torch.randn(x0.shape, generator=g)
  t = torch.tensor(TIMES)
  want = ref.p_losses(x0, t, noise=noise, loss_reduction="none").numpy()
  got = self_conditioning.losses_with_estimate(
      params, toy_apply_jax, sched1000, jnp.asarray(nhwc(x0)),
      jnp.asarray(t.numpy()), jnp.asarray(nhwc(noise)), None,
      jnp.asarray(coin < 0.5), prediction=prediction,
      weighting="eps_equivalent")
  assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("objective,prediction", [
    ("pred_noise", "eps"), ("pred_v", "v")])
def test_sampler_step_matches_lucidrains(torch, sched1000, monkeypatch,
                                         objective, prediction):
  """Per step, teacher-forced on lucidrains' chain with injected noise:
  x_{t-1} and the (clipped) x_0 handed to the next step."""
  ref, params = lucidrains_self_cond(torch, objective)
  g = torch.Generator().manual_seed(1)
  x = torch.randn((2, C, 6, 6), generator=g)
  x_start = None
  step = jax.jit(lambda x, est, t, z: diffusion.p_step_from_output(
      sched1000, x, t, toy_apply_jax(
          params, self_conditioning.conditioned_input(x, est),
          jnp.full((x.shape[0],), t)), z, prediction=prediction,
      variance="fixedsmall", clip_denoised=True))
  checked = 0
  for t in range(T - 1, -1, -1):
    z = torch.randn(x.shape, generator=g)
    monkeypatch.setattr(torch, "randn_like", lambda _, z=z: z.clone())
    est = None if x_start is None else jnp.asarray(nhwc(x_start))
    if t % 37 == 0 or t < 3 or t > T - 3:
      got_x, got_x0 = step(jnp.asarray(nhwc(x)), est, t,
                           jnp.asarray(nhwc(z)))
    x, x_start = ref.p_sample(x, t, x_start)
    if t % 37 == 0 or t < 3 or t > T - 3:
      assert_close(got_x, nhwc(x), rtol=1e-5, atol=1e-5,
                   err_msg=f"x_{t - 1}")
      assert_close(got_x0, nhwc(x_start), rtol=1e-5, atol=1e-5,
                   err_msg=f"x0 at t={t}")
      checked += 1
  assert checked > 30
