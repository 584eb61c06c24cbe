"""q_sample, p_sample_step and loss_fn against diffusers, lucidrains and
labml, per step, with the same injected noise drawn in torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, schedules
from tests.reference_models import (assert_close, assert_close_to_terms,
                                    make_torch_model,
                                    nhwc, toy_apply_jax, toy_weights)
from tests.test_schedules import lucidrains_diffusion

T = 1000
C = 3
SHAPE = (4, 6, 6, C)  # NHWC
STEPS = [0, 1, 2, 3, 9, 10, 50, 100, 500, 998, 999]


TABLES = schedules.schedule_tables(schedules.get_betas("linear", T))


def x0_term_scale(tables, t, x_t, eps):
  """|1/sqrt(abar_t) x_t| + |sqrt(1/abar_t - 1) eps|, NHWC."""
  return (tables["sqrt_recip_alphas_cumprod"][t] * np.abs(nhwc(x_t)) +
          tables["sqrt_recipm1_alphas_cumprod"][t] *
          np.abs(nhwc(np.asarray(eps, np.float64))))


@pytest.fixture(scope="module")
def sched():
  return schedules.make_schedule(schedules.get_betas("linear", T))


@pytest.fixture(scope="module")
def toy():
  return {k: jnp.asarray(v) for k, v in toy_weights(C).items()}


def torch_normal(torch, seed, shape_nchw, dtype=None):
  g = torch.Generator().manual_seed(seed)
  return torch.randn(shape_nchw, generator=g,
                     dtype=dtype or torch.float32)


# --- q_sample (eq. 4) ----------------------------------------------------


def test_q_sample_matches_diffusers_and_lucidrains(torch, sched):
  diffusers = pytest.importorskip("diffusers")
  x0 = torch.rand((8, C, 6, 6)) * 2 - 1
  noise = torch_normal(torch, 1, (8, C, 6, 6))
  t = torch.tensor([0, 1, 2, 10, 100, 500, 998, 999])
  ours = diffusion.q_sample(sched, jnp.asarray(nhwc(x0)), jnp.asarray(t),
                            jnp.asarray(nhwc(noise)))
  # diffusers evaluated exactly: our float64 alpha-bar, float64 inputs.
  tables = schedules.schedule_tables(schedules.get_betas("linear", T))
  ref = diffusers.DDPMScheduler(num_train_timesteps=T)
  ref.alphas_cumprod = torch.from_numpy(tables["alphas_cumprod"])
  assert_close(ours, nhwc(ref.add_noise(x0.double(), noise.double(), t)))
  # Stock diffusers forms sqrt(1 - abar_t) in float32, which cancels at
  # small t (1 - 0.9999 keeps ~3 digits): up to ~4e-4 relative on the noise
  # term there, i.e. ~2e-6 absolute here. Documented bound for that cause.
  native = diffusers.DDPMScheduler(num_train_timesteps=T)
  assert_close(ours, nhwc(native.add_noise(x0, noise, t)), atol=1e-5)
  luc = lucidrains_diffusion(torch, "linear", channels=C)
  assert_close(ours, nhwc(luc.q_sample(x0, t, noise)))


# --- p_sample_step (Algorithm 2) -----------------------------------------


def diffusers_float64(diffusers, torch, sched_np, variance, clip):
  """A DDPMScheduler whose tables are our float64 ones, run in float64, so
  that it evaluates its formulas exactly (it recomputes beta_t from the
  alpha-bar ratio, which in float32 moves the mean by up to ~4e-4 at
  t < 10; in float64 that rounding is 1e-12)."""
  ref = diffusers.DDPMScheduler(num_train_timesteps=T, variance_type=variance,
                                clip_sample=clip)
  ref.alphas_cumprod = torch.from_numpy(sched_np["alphas_cumprod"])
  ref.one = torch.tensor(1.0, dtype=torch.float64)
  return ref


@pytest.mark.parametrize("variance,clip", [("fixedsmall", True),
                                           ("fixedsmall", False),
                                           ("fixedlarge", True),
                                           ("fixedlarge", False)])
def test_p_sample_step_matches_diffusers_step(torch, sched, toy, variance,
                                              clip):
  diffusers = pytest.importorskip("diffusers")
  tables = schedules.schedule_tables(schedules.get_betas("linear", T))
  ref = diffusers_float64(diffusers, torch, tables,
                          variance.replace("fixed", "fixed_"), clip)
  torch_model = make_torch_model(torch, toy_weights(C), C).double()
  for t in STEPS:
    x_t = torch_normal(torch, 100 + t, (SHAPE[0], C, 6, 6), torch.float64)
    t_vec = torch.full((SHAPE[0],), t)
    eps = torch_model(x_t, t_vec)
    # randn_tensor draws from the generator exactly like this.
    noise = torch_normal(torch, 7 + t, x_t.shape, torch.float64)
    out = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(7 + t))
    x_prev, x0 = diffusion.p_sample_step(
        toy, toy_apply_jax, sched, jnp.asarray(nhwc(x_t), jnp.float32), t,
        noise=jnp.asarray(nhwc(noise), jnp.float32), clip_denoised=clip,
        variance=variance)
    assert_close_to_terms(x0, nhwc(out.pred_original_sample),
                          x0_term_scale(tables, t, x_t, eps), err_msg=f"t={t}")
    assert_close(x_prev, nhwc(out.prev_sample), err_msg=f"x_prev, t={t}")


def test_p_sample_step_near_native_float32_diffusers(torch, sched, toy):
  """The stock float32 DDPMScheduler, for the record: it recomputes
  beta_t = 1 - abar_t / abar_{t-1} in float32, whose cancellation error
  (~6e-8 absolute on beta_t ~ 1e-4) moves the step mean by up to ~4e-4
  relative at small t. That documented cause bounds this comparison."""
  diffusers = pytest.importorskip("diffusers")
  ref = diffusers.DDPMScheduler(num_train_timesteps=T,
                                variance_type="fixed_small")
  torch_model = make_torch_model(torch, toy_weights(C), C)
  for t in STEPS:
    x_t = torch_normal(torch, 100 + t, (SHAPE[0], C, 6, 6))
    eps = torch_model(x_t, torch.full((SHAPE[0],), t))
    noise = torch_normal(torch, 7 + t, x_t.shape)
    out = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(7 + t))
    x_prev, _ = diffusion.p_sample_step(
        toy, toy_apply_jax, sched, jnp.asarray(nhwc(x_t)), t,
        noise=jnp.asarray(nhwc(noise)), variance="fixedsmall")
    assert_close(x_prev, nhwc(out.prev_sample), rtol=1e-3, atol=1e-4,
                 err_msg=f"t={t}")


def test_p_sample_step_matches_lucidrains(torch, sched, toy):
  luc = lucidrains_diffusion(torch, "linear", channels=C)
  for t in STEPS:
    x_t = torch_normal(torch, 200 + t, (SHAPE[0], C, 6, 6))
    torch.manual_seed(11 + t)
    noise = torch.randn_like(x_t)
    torch.manual_seed(11 + t)  # p_sample draws torch.randn_like(x) again
    ref_prev, ref_x0 = luc.p_sample(x_t, t)
    x_prev, x0 = diffusion.p_sample_step(
        toy, toy_apply_jax, sched, jnp.asarray(nhwc(x_t)), t,
        noise=jnp.asarray(nhwc(noise)), clip_denoised=True,
        variance="fixedsmall", mean_from="x0")
    assert_close_to_terms(x0, nhwc(ref_x0),
                          x0_term_scale(TABLES, t, x_t,
                                        luc.model(x_t, torch.full((4,), t))),
                          err_msg=f"x0, t={t}")
    assert_close(x_prev, nhwc(ref_prev), err_msg=f"x_prev, t={t}")


def labml_p_sample(x_t, eps_theta, t, noise, betas64):
  """labml's DenoiseDiffusion.p_sample (eq. 11 mean, sigma^2 = beta),
  written out in float64. labml adds noise at every t, including the last
  step; Algorithm 2 (and we) add none at t = 0, so at t = 0 the test passes
  zero noise to both."""
  alpha = 1.0 - betas64
  alpha_bar = np.cumprod(alpha)
  eps_coef = (1 - alpha[t]) / (1 - alpha_bar[t])**0.5
  mean = 1 / (alpha[t]**0.5) * (x_t - eps_coef * eps_theta)
  var = betas64[t]
  return mean + (var**0.5) * noise


def test_p_sample_step_eq11_matches_labml(torch, sched, toy):
  betas64 = schedules.get_betas("linear", T)
  for t in STEPS:
    x_t = np.asarray(torch_normal(torch, 300 + t, SHAPE), np.float32)
    noise = np.asarray(torch_normal(torch, 13 + t, SHAPE), np.float32)
    if t == 0:
      noise = np.zeros_like(noise)
    eps = np.asarray(toy_apply_jax(toy, x_t, jnp.full((SHAPE[0],), t)))
    want = labml_p_sample(x_t.astype(np.float64), eps.astype(np.float64), t,
                          noise.astype(np.float64), betas64)
    x_prev, _ = diffusion.p_sample_step(
        toy, toy_apply_jax, sched, jnp.asarray(x_t), t,
        noise=jnp.asarray(noise), clip_denoised=False, variance="fixedlarge",
        mean_from="eps")
    assert_close(x_prev, want, err_msg=f"t={t}")


def test_no_noise_at_t0_and_routes_agree_unclipped(sched, toy):
  x_t = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
  noise = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  for t in [0, 5, 700]:
    a, _ = diffusion.p_sample_step(toy, toy_apply_jax, sched, x_t, t,
                                   noise=noise, clip_denoised=False,
                                   mean_from="x0")
    b, _ = diffusion.p_sample_step(toy, toy_apply_jax, sched, x_t, t,
                                   noise=noise, clip_denoised=False,
                                   mean_from="eps")
    # eq. 7 with eq. 15's x0 equals eq. 11 (up to float32 rounding).
    assert_close(a, b, rtol=1e-5, atol=2e-6, err_msg=f"t={t}")
  x0_only, _ = diffusion.p_sample_step(toy, toy_apply_jax, sched, x_t, 0,
                                       noise=noise)
  zero, _ = diffusion.p_sample_step(toy, toy_apply_jax, sched, x_t, 0,
                                    noise=jnp.zeros(SHAPE))
  assert_close(x0_only, zero, rtol=0, atol=0)
  with pytest.raises(ValueError, match="key or injected noise"):
    diffusion.p_sample_step(toy, toy_apply_jax, sched, x_t, 3)


# --- loss_fn (eq. 14) ----------------------------------------------------


def test_loss_fn_matches_lucidrains_p_losses(torch, sched, toy):
  luc = lucidrains_diffusion(torch, "linear", objective="pred_noise",
                             channels=C)
  x0 = torch.rand((8, C, 6, 6)) * 2 - 1
  t = torch.tensor([0, 1, 2, 50, 300, 700, 998, 999])
  noise = torch_normal(torch, 5, x0.shape)
  want = float(luc.p_losses(x0, t, noise=noise))
  got = diffusion.loss_fn(toy, toy_apply_jax, sched, jnp.asarray(nhwc(x0)),
                          t=jnp.asarray(t.numpy()),
                          noise=jnp.asarray(nhwc(noise)))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # Jitted with a key: t uniform in [0, T), noise N(0, 1).
  f = jax.jit(diffusion.loss_fn, static_argnames="apply_fn")
  a = f(toy, toy_apply_jax, sched, jnp.asarray(nhwc(x0)),
        jax.random.PRNGKey(3))
  b = f(toy, toy_apply_jax, sched, jnp.asarray(nhwc(x0)),
        jax.random.PRNGKey(3))
  assert float(a) == float(b) and np.isfinite(float(a))
