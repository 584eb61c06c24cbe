"""Mean parameterisations, loss weightings, learned variances and the
bound's terms against lucidrains' GaussianDiffusion and
LearnedGaussianDiffusion, on the same model outputs, t and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, likelihood, losses, schedules
from tests.reference_models import (assert_close, assert_close_to_terms,
                                    make_torch_model, nhwc,
                                    toy_apply_jax, toy_weights)

T = 1000
C = 3
TIMES = [0, 1, 2, 50, 300, 700, 998, 999]


@pytest.fixture(scope="module")
def sched():
  return schedules.make_schedule(schedules.get_betas("linear", T))


def batch(torch, seed=0):
  g = torch.Generator().manual_seed(seed)
  x0 = torch.rand((len(TIMES), C, 6, 6), generator=g) * 2 - 1
  noise = torch.randn(x0.shape, generator=g)
  return x0, torch.tensor(TIMES), noise


def lucidrains(torch, kind, channels_out, **kwargs):
  ddp = pytest.importorskip("denoising_diffusion_pytorch")
  weights = toy_weights(channels_out)
  model = make_torch_model(torch, weights, C)
  cls = getattr(ddp, kind)
  ref = cls(model, image_size=6, timesteps=T, beta_schedule="linear",
            auto_normalize=False, **kwargs)
  return ref, {k: jnp.asarray(v) for k, v in weights.items()}


def test_parameterisations_invert_each_other(sched):
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  x0 = jax.random.uniform(k[0], (len(TIMES), 6, 6, C), minval=-1, maxval=1)
  noise = jax.random.normal(k[1], x0.shape)
  t = jnp.asarray(TIMES)
  x_t = diffusion.q_sample(sched, x0, t, noise)
  tab = schedules.schedule_tables(schedules.get_betas("linear", T))
  # Each route solves eq. 4 (or eq. 7) back for x_0 or eps; at large t the
  # terms are ~100x the result, so the bound is relative to the terms.
  scale = (tab["sqrt_recip_alphas_cumprod"][TIMES][:, None, None, None] *
           np.abs(np.asarray(x_t)) + 1.0)
  assert_close_to_terms(
      diffusion.predict_x0_from_eps(sched, x_t, t, noise), x0, scale,
      err_msg="x0 from eps")
  assert_close(diffusion.predict_x0_from_v(
      sched, x_t, t, diffusion.v_target(sched, x0, t, noise)), x0, atol=1e-5)
  mu = diffusion.training_target("xprev", sched, x0, x_t, t, noise)
  back = diffusion.predict_x0_from_xprev(sched, x_t, t, mu)
  coef = np.abs(tab["posterior_mean_coef2"][TIMES] /
                tab["posterior_mean_coef1"][TIMES])[:, None, None, None]
  assert_close_to_terms(back, x0, coef * np.abs(np.asarray(x_t)) + 1.0,
                        err_msg="x0 from xprev")
  eps_scale = (np.abs(np.asarray(x_t)) + np.abs(np.asarray(x0))) / (
      tab["sqrt_recipm1_alphas_cumprod"][TIMES][:, None, None, None] *
      np.sqrt(tab["alphas_cumprod"][TIMES])[:, None, None, None])
  assert_close_to_terms(diffusion.predict_eps_from_x0(sched, x_t, t, x0),
                        noise, eps_scale, err_msg="eps from x0")


@pytest.mark.parametrize("objective,prediction", [
    ("pred_noise", "eps"), ("pred_x0", "x0"), ("pred_v", "v")])
@pytest.mark.parametrize("min_snr", [False, True])
def test_losses_match_lucidrains(torch, sched, objective, prediction,
                                 min_snr):
  ref, params = lucidrains(torch, "GaussianDiffusion", C,
                           objective=objective, min_snr_loss_weight=min_snr,
                           min_snr_gamma=5)
  x0, t, noise = batch(torch)
  want = ref.p_losses(x0, t, noise=noise, loss_reduction="none").numpy()
  # Without min-SNR lucidrains still weights x0 by SNR and v by
  # SNR / (SNR + 1): the eps-equivalent weighting.
  got = losses.loss_per_example(
      params, toy_apply_jax, sched, jnp.asarray(nhwc(x0)),
      jnp.asarray(t.numpy()), jnp.asarray(nhwc(noise)),
      prediction=prediction,
      weighting="min_snr" if min_snr else "eps_equivalent", min_snr_gamma=5.0)
  assert_close(got, want, rtol=1e-5, atol=0)


def test_unweighted_mse_is_the_plain_mean_square(sched):
  t = jnp.asarray(TIMES)
  x0 = jnp.zeros((len(TIMES), 2, 2, 1))
  out = jnp.ones_like(x0)
  got = losses.losses_from_output(sched, out, x0, t, jnp.zeros_like(x0),
                                  prediction="x0")
  assert_close(got, np.ones(len(TIMES)))
  # P2 (k=1, gamma=1) on eps: 1 / (1 + SNR).
  w = losses.loss_weight("p2", "eps", sched, t)
  tab = schedules.schedule_tables(schedules.get_betas("linear", T))
  snr = tab["alphas_cumprod"] / (1 - tab["alphas_cumprod"])
  assert_close(w, 1.0 / (1.0 + snr[TIMES]), rtol=1e-6)
  with pytest.raises(ValueError, match="xprev"):
    losses.loss_weight("min_snr", "xprev", sched, t)


def test_normal_kl_and_decoder_match_lucidrains(torch):
  lgd = pytest.importorskip("denoising_diffusion_pytorch.learned_gaussian_diffusion")
  g = torch.Generator().manual_seed(1)
  m1, m2 = torch.randn((4, 3, 5, 5), generator=g), torch.randn(
      (4, 3, 5, 5), generator=g)
  lv1, lv2 = torch.randn(m1.shape, generator=g), torch.randn(
      m1.shape, generator=g) - 3
  assert_close(likelihood.normal_kl(*(jnp.asarray(v.numpy())
                                      for v in (m1, lv1, m2, lv2))),
               lgd.normal_kl(m1, lv1, m2, lv2).numpy(), rtol=1e-5, atol=1e-6)
  # Pixels on the 256-level grid, including both open edge bins.
  x = (torch.randint(0, 256, m1.shape, generator=g) / 127.5 - 1.0)
  x[0, 0, 0, :] = -1.0
  x[0, 0, 1, :] = 1.0
  means, log_scales = m1 * 0.1, lv2 * 0.5
  # Half the batch well inside its bins: the bulk of the distribution.
  means[2:] = x[2:] + 0.002 * m1[2:]
  log_scales[2:] = np.log(0.004) + 0.1 * lv1[2:]
  # lucidrains floors probabilities at 1e-15 where the original floors at
  # 1e-12; with its floor the same function gives its numbers. In float64
  # every bin down to probability 1e-10 is compared; further out the two
  # CDFs cancel to ~1e-16 even in float64, and the floor is compared.
  want = lgd.discretized_gaussian_log_likelihood(
      x.double(), means=means.double(), log_scales=log_scales.double()).numpy()
  with jax.enable_x64(True):
    got = likelihood.discretized_gaussian_log_likelihood(
        *(jnp.asarray(v.double().numpy()) for v in (x, means, log_scales)),
        log_floor=1e-15)
    assert got.dtype == jnp.float64
  got = np.asarray(got)
  conditioned = want > np.log(1e-10)
  assert_close(got[conditioned], want[conditioned], rtol=1e-5, atol=0)
  floored = want == np.log(1e-15)
  assert floored.any() and (got[floored] == want[floored]).all()
  assert (want > -1).any() and (~conditioned & ~floored).any()
  # In float32 a bin far in a tail is the difference of two CDFs that both
  # round to ~1, so its last digits are rounding (torch's and XLA's tanh
  # also differ in the last ulp there); bins of probability >= 1e-2 are
  # well conditioned and compared at 1e-5.
  want32 = lgd.discretized_gaussian_log_likelihood(
      x, means=means, log_scales=log_scales).numpy()
  got32 = np.asarray(likelihood.discretized_gaussian_log_likelihood(
      *(jnp.asarray(v.numpy()) for v in (x, means, log_scales)),
      log_floor=1e-15))
  ok = want > np.log(1e-2)
  assert ok.sum() > 50
  assert_close(got32[ok], want32[ok], rtol=1e-5, atol=1e-6)


def test_learned_range_and_hybrid_loss_match_lucidrains(torch, sched):
  ref, params = lucidrains(torch, "LearnedGaussianDiffusion", 2 * C,
                           objective="pred_noise", vb_loss_weight=0.001)
  # lucidrains clamps the posterior variance at 1e-20 before its log, so
  # at t = 0 (where it is 0) its log beta~ is log(1e-20); the original, and
  # ddpm-jax, use beta~ of t = 1 there. The formulas are compared with its
  # table mirrored; the table difference is exactly that one entry.
  theirs = ref.posterior_log_variance_clipped.numpy()
  tab = schedules.schedule_tables(schedules.get_betas("linear", T))
  assert theirs[0] == pytest.approx(np.log(1e-20), rel=1e-6)
  assert_close(theirs[1:], tab["posterior_log_variance_clipped"][1:],
               rtol=1e-6)
  mirrored = sched.replace(posterior_log_variance_clipped=jnp.asarray(theirs))
  x0, t, noise = batch(torch, seed=2)
  # Put x0 on the pixel grid, as the decoder term assumes.
  x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
  x_t = ref.q_sample(x_start=x0, t=t, noise=noise)
  out = ref.model(x_t, t)
  mean, _, log_var, x_start = ref.p_mean_variance(
      x=x_t, t=t, clip_denoised=False, model_output=out)
  j_out = jnp.asarray(nhwc(out.detach().numpy()))
  j_xt = jnp.asarray(nhwc(x_t.numpy()))
  jt = jnp.asarray(t.numpy())
  g_mean, g_log_var, g_x0 = diffusion.p_mean_variance(
      mirrored, j_out, j_xt, jt, prediction="eps", variance="learned_range",
      clip_denoised=False)
  assert_close(g_log_var, nhwc(log_var.detach().numpy()), rtol=1e-5)
  scale = tab["sqrt_recip_alphas_cumprod"][TIMES][:, None, None, None] * (
      np.abs(np.asarray(j_xt)) + 1.0)
  assert_close_to_terms(g_x0, nhwc(x_start.detach().numpy()), scale,
                        err_msg="x0")
  assert_close_to_terms(g_mean, nhwc(mean.detach().numpy()),
                        tab["posterior_mean_coef1"][TIMES][:, None, None,
                                                           None] * scale +
                        np.abs(np.asarray(j_xt)), err_msg="mean")
  # The hybrid loss (mse + 0.001 * bound term), per example.
  want = ref.p_losses(x0, t, noise=noise, loss_reduction="none")
  got = losses.loss_per_example(
      params, toy_apply_jax, mirrored, jnp.asarray(nhwc(x0)), jt,
      jnp.asarray(nhwc(noise)), prediction="eps", variance="learned_range",
      loss_type="hybrid", hybrid_lambda=0.001, log_floor=1e-15)
  assert_close(got, want.detach().numpy(), rtol=1e-5, atol=0)


def test_hybrid_stops_the_mean_gradient_in_the_bound(sched):
  x0 = jnp.zeros((2, 2, 2, 1))
  t = jnp.asarray([0, 500])
  noise = jnp.ones_like(x0)

  def vb_only(out):
    return jnp.sum(losses.losses_from_output(
        sched, out, x0, t, noise, variance="learned_range",
        loss_type="hybrid", hybrid_lambda=1.0) - losses.losses_from_output(
            sched, out, x0, t, noise, variance="learned_range",
            loss_type="mse"))

  grad = jax.jit(jax.grad(vb_only))(jnp.full((2, 2, 2, 2), 0.3))
  assert np.all(np.asarray(grad[..., 0]) == 0)  # mean part: stopped
  assert np.any(np.asarray(grad[..., 1]) != 0)  # variance part: trained
  with pytest.raises(ValueError, match="learned variance"):
    losses.losses_from_output(sched, x0, x0, t, noise, loss_type="hybrid")


# --- the objective through config, train_step and the sampler -------------

COMBOS = [
    # (prediction, learned_variance, loss, weighting)
    ("x0", "", "mse", "min_snr"),
    ("v", "", "mse", "eps_equivalent"),
    ("eps", "learned_range", "hybrid", "p2"),
    ("xprev", "learned", "kl", "none"),
    ("eps", "", "kl", "none"),
]


def objective_config(prediction, learned, loss, weighting):
  from tests.tiny_configs import tiny_digits_config
  config = tiny_digits_config(num_timesteps=10, batch_size=4, num_samples=2,
                              one_level=True)
  config.diffusion.prediction = prediction
  config.diffusion.learned_variance = learned
  config.training.loss = loss
  config.training.loss_weighting = weighting
  return config


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(filter(None, c))
                                               for c in COMBOS])
@pytest.mark.slow
def test_every_objective_trains_and_samples(combo):
  import functools
  from ddpm_jax import data, from_config, train, validation
  from ddpm_jax.samplers import generate
  from ddpm_jax.models.unet import eps_fn
  config = objective_config(*combo)
  validation.validate_config(config)
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  schedule = from_config.make_schedule(config)
  state = train.create_train_state(config, model, tx)
  out_ch = jax.eval_shape(model.apply, {"params": state.params},
                          jnp.zeros((1, 8, 8, 1)),
                          jnp.zeros((1,), jnp.int32)).shape[-1]
  assert out_ch == (2 if combo[1] else 1)
  step = jax.jit(functools.partial(
      train.train_step, apply_fn=eps_fn(model), tx=tx, ema_decay=0.5,
      loss_options=from_config.objective_options(config)))
  batches = data.create_input_iter(config)
  before = state.params
  for _ in range(2):
    state, metrics = step(state, jnp.asarray(next(batches)[0]), schedule)
    assert bool(metrics["finite"]), metrics
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 before, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  x = generate.generate(config, model, state.ema_params, 2, 2, seed=0)
  assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))


@pytest.mark.slow
def test_default_objective_is_the_papers_loss():
  # The default config's train_step loss is L_simple (eq. 14) exactly.
  import functools
  from ddpm_jax import data, from_config, train
  from ddpm_jax.models.unet import eps_fn
  config = objective_config("eps", "", "mse", "none")
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  schedule = from_config.make_schedule(config)
  state = train.create_train_state(config, model, tx)
  # Perturbed: a fresh U-Net outputs exactly zero (its last convolution
  # starts at zero), which would make the loss blind to t and x_t. The
  # noise is NumPy's: a jitted draw per array compiled for 16 s in the suite.
  rng = np.random.default_rng(5)
  state = state.replace(params=jax.tree_util.tree_map(
      lambda p: p + np.float32(0.05) * rng.standard_normal(
          p.shape, np.float32), state.params))
  x0 = jnp.asarray(next(data.create_input_iter(config))[0])
  # Both jitted: run eagerly, the U-Net takes ~50 s on 2 cores.
  step = jax.jit(functools.partial(train.train_step,
                                   apply_fn=eps_fn(model), tx=tx,
                                   ema_decay=0.5))
  _, metrics = step(state, x0, schedule)
  key_loss, key_dropout = jax.random.split(jax.random.fold_in(state.rng, 0))
  want = jax.jit(diffusion.loss_fn, static_argnums=1)(
      state.params, eps_fn(model), schedule, x0, key_loss,
      dropout_rng=key_dropout)
  assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-6)
  # Not the loss of an all-zero output (mean(noise^2), about 1).
  noise = jax.random.normal(jax.random.split(key_loss)[1], x0.shape)
  assert abs(float(want) - float(jnp.mean(noise**2))) > 1e-2


@pytest.mark.parametrize("change,match", [
    (dict(loss="hybrid"), "trains a learned variance"),
    (dict(learned="learned_range"), "leaves the learned variance untrained"),
    (dict(loss="kl", weighting="min_snr"), "no effect"),
    (dict(prediction="xprev", weighting="p2"), "xprev"),
    (dict(prediction="y"), "diffusion.prediction"),
    (dict(weighting="snr"), "training.loss_weighting"),
])
def test_objective_config_errors(change, match):
  from ddpm_jax import from_config, validation
  args = dict(prediction="eps", learned="", loss="mse", weighting="none")
  args.update(change)
  config = objective_config(**args)
  with pytest.raises(from_config.ConfigError, match=match):
    validation.validate_config(config)


@pytest.mark.parametrize("prediction_type,variance_type,prediction,variance", [
    ("sample", "fixed_small", "x0", "fixedsmall"),
    ("v_prediction", "fixed_large", "v", "fixedlarge"),
    ("epsilon", "learned_range", "eps", "learned_range"),
    ("v_prediction", "learned_range", "v", "learned_range"),
])
def test_step_matches_diffusers(torch, sched, prediction_type, variance_type,
                                prediction, variance):
  """DDPMScheduler.step with x0 / v predictions and a learned_range
  variance, in float64 on our float64 tables (see diffusers_float64), with
  the same injected noise. (diffusers' 'fixed_large_log' returns NaN,
  diffusers issue 14569, and is not a reference here.)"""
  diffusers = pytest.importorskip("diffusers")
  from tests.test_diffusion_parity import diffusers_float64, torch_normal
  tables = schedules.schedule_tables(schedules.get_betas("linear", T))
  ref = diffusers_float64(diffusers, torch, tables, variance_type, True)
  ref.config.prediction_type = prediction_type
  out_channels = 2 * C if variance == "learned_range" else C
  model = make_torch_model(torch, toy_weights(out_channels, seed=4),
                           C).double()
  for t in [0, 1, 2, 9, 50, 500, 998, 999]:
    x_t = torch_normal(torch, 100 + t, (4, C, 6, 6), torch.float64)
    out = model(x_t, torch.full((4,), t))
    noise = torch_normal(torch, 7 + t, x_t.shape, torch.float64)
    want = ref.step(out, t, x_t,
                    generator=torch.Generator().manual_seed(7 + t))
    x_prev, x0 = diffusion.p_step_from_output(
        sched, jnp.asarray(nhwc(x_t), jnp.float32), t,
        jnp.asarray(nhwc(out.detach()), jnp.float32),
        jnp.asarray(nhwc(noise), jnp.float32), prediction=prediction,
        variance=variance, clip_denoised=True)
    assert_close(x0, nhwc(want.pred_original_sample), atol=2e-6,
                 err_msg=f"x0, t={t}")
    assert_close(x_prev, nhwc(want.prev_sample), err_msg=f"x_prev, t={t}")


# --- closed forms ----------------------------------------------------------


def test_prior_term_matches_its_formula(sched):
  tab = schedules.schedule_tables(schedules.get_betas("linear", T))
  x0 = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 2))
  abar = tab["alphas_cumprod"][-1]
  # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) per dimension, in bits.
  kl = 0.5 * (-1.0 - np.log(1.0 - abar) + (1.0 - abar) + abar * x0**2)
  want = kl.mean(axis=(1, 2, 3)) / np.log(2.0)
  got = losses.prior_bpd(sched, jnp.asarray(x0, jnp.float32))
  assert_close(got, want, rtol=1e-5, atol=1e-9)
  assert float(jnp.max(got)) < 1e-4  # the linear schedule's L_T is ~0


def test_oracle_model_reaches_the_bounds_minimum(sched):
  """A model that knows the one training image x* predicts the exact noise,
  so every KL term (t > 0) is 0 with the posterior's own variance, and the
  t = 0 term is the decoder's mass of x*'s bins under N(x*, beta~_1)."""
  rng = np.random.default_rng(1)
  x_star = (rng.integers(0, 256, (1, 4, 4, 1)) / 127.5 - 1).astype(np.float32)
  x_star[0, 0, 0, 0], x_star[0, 0, 1, 0] = -1.0, 1.0  # both edge bins
  x0 = jnp.asarray(np.repeat(x_star, len(TIMES), axis=0))
  t = jnp.asarray(TIMES)
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  x_t = diffusion.q_sample(sched, x0, t, noise)
  oracle_eps = diffusion.predict_eps_from_x0(sched, x_t, t, x0)
  terms = np.asarray(losses.vlb_terms(sched, oracle_eps, x0, x_t, t,
                                      variance="fixedsmall"))
  assert np.all(np.abs(terms[1:]) < 1e-5), terms
  tab = schedules.schedule_tables(schedules.get_betas("linear", T))
  sigma = np.sqrt(tab["posterior_variance"][1])  # t = 0 uses beta~_1
  phi = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) *
                                     (z + 0.044715 * z**3)))
  half = (1 / 255) / sigma
  p = np.where(np.abs(x_star) > 0.999, phi(half), phi(half) - phi(-half))
  want = -np.mean(np.log(p)) / np.log(2)
  assert terms[0] == pytest.approx(want, rel=1e-5)


# --- bits/dim --------------------------------------------------------------


@pytest.mark.slow
def test_bpd_is_the_sum_of_its_terms_and_pads_batches():
  config = objective_config("eps", "", "mse", "none")
  from ddpm_jax import data, from_config, train
  from ddpm_jax.evaluators import bpd
  from ddpm_jax.models.unet import eps_fn
  model = from_config.make_model(config)
  schedule = from_config.make_schedule(config)
  state = train.create_train_state(config, model,
                                   from_config.make_optimizer(config))
  x0 = bpd.quantize(data.digits_images("test")[:5])
  key = jax.random.PRNGKey(0)
  out = bpd.bpd_terms(state.params, eps_fn(model), schedule,
                      jnp.asarray(x0), key, variance="fixedlarge")
  assert out["terms"].shape == (10, 5)
  assert_close(out["total"], out["prior"] + out["terms"].sum(0), rtol=1e-6)
  assert_close(out["decoder"], out["terms"][0])
  # Term t by hand: the noise of fold_in(key, t) through vlb_terms.
  t = 4

  @jax.jit
  def term_by_hand(params, x0):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
    tv = jnp.full((5,), t)
    x_t = diffusion.q_sample(schedule, x0, tv, noise)
    return losses.vlb_terms(schedule, eps_fn(model)(params, x_t, tv), x0,
                            x_t, tv, variance="fixedlarge",
                            clip_denoised=True)

  want = term_by_hand(state.params, jnp.asarray(x0))
  assert_close(out["terms"][t], want, rtol=1e-5)
  # Batches of 2 (the last one 1) give the mean of the per-image totals.
  res = bpd.evaluate_bpd(
      state.params, eps_fn(model), schedule, [x0[:2], x0[2:4], x0[4:]], key,
      variance="fixedlarge")
  assert res["num_examples"] == 5
  per_batch = [bpd.bpd_terms(
      state.params, eps_fn(model), schedule, jnp.asarray(b),
      jax.random.fold_in(key, i), variance="fixedlarge")["total"]
               for i, b in enumerate([x0[:2], x0[2:4], x0[4:]])]
  assert res["total"] == pytest.approx(
      float(np.mean(np.concatenate(per_batch))), rel=1e-6)


@pytest.mark.slow
def test_bpd_decreases_with_training(tmp_path):
  """On the offline digits, the held-out bits/dim after a short run is
  below that of the initial model (evaluated in the run and by
  evaluate.py)."""
  import json
  import subprocess
  import sys
  from tests.test_train_cli import ROOT, TINY, read_scalars
  wd = str(tmp_path / "run")
  env = dict(__import__("os").environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = [a for a in TINY if "warmup" not in a] + [
      "--config.optim.warmup_steps=0", "--config.optim.learning_rate=2e-3",
      "--config.training.eval_every=100", "--config.training.eval_examples=64",
      "--config.training.num_steps=200", "--config.training.ema_decay=0.9",
      "--config.training.log_every=100",
      "--config.training.checkpoint_every=200", "--workdir", wd]
  p = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  bpd = read_scalars(__import__("os").path.join(wd, "tensorboard"))[
      "eval/bpd_total"]
  assert sorted(bpd) == [100, 200]
  e = subprocess.run([sys.executable, "evaluate.py", "--workdir", wd,
                      "--num", "64"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=900)
  assert e.returncode == 0, e.stderr[-3000:]
  final = json.loads(e.stdout.strip().splitlines()[-1])
  assert final["step"] == 200 and final["num_examples"] == 64
  # Long work says so: a line before each evaluation in the run, and a
  # progress bar for evaluate.py's bits/dim.
  assert "step 100: bits/dim on test ..." in p.stdout, p.stdout[-2000:]
  assert "step 200: drawing the sample grid (4 samples) ..." in p.stdout
  assert "bits/dim: " in e.stderr, e.stderr[-2000:]
  assert final["total"] == pytest.approx(bpd[200], rel=1e-5)
  # The initial model (step 0: EMA = init) is far worse.
  # Here, in the test's process: the same flags, precision and device as
  # train.py's, so the same programs.
  from ddpm_jax import from_config, train
  from ddpm_jax.checkpoints import read_config
  from ddpm_jax.evaluators import bpd as bpd_eval
  c = read_config(wd)
  m = from_config.make_model(c)
  s = train.create_train_state(c, m, from_config.make_optimizer(c))
  initial = bpd_eval.evaluate(c, m, s.params, from_config.make_schedule(c))
  # The same noise (from the seed) at every evaluation: the bound falls.
  assert initial["total"] - 0.2 > bpd[100] > bpd[200], (initial, bpd)
  assert initial["prior"] == pytest.approx(final["prior"])  # no parameters
