"""Beta schedules and derived tables against diffusers and lucidrains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import schedules
from tests.reference_models import assert_close

T = 1000


def test_tables_are_float32_pytree_and_jittable():
  sched = schedules.make_schedule(schedules.get_betas("linear", T))
  leaves = jax.tree_util.tree_leaves(sched)
  assert len(leaves) == len(schedules.schedule_tables(np.full(3, 0.1)))
  assert all(leaf.dtype == jnp.float32 and leaf.shape == (T,)
             for leaf in leaves)
  assert sched.num_timesteps == T
  # A pytree argument of a jitted function.
  f = jax.jit(lambda s, t: s.alphas_cumprod[t])
  assert float(f(sched, 0)) == pytest.approx(1 - 1e-4, rel=1e-7)
  with pytest.raises(Exception):
    sched.betas = sched.alphas  # frozen


def test_tables_match_original_formulas():
  betas = schedules.get_betas("linear", T)
  tab = schedules.schedule_tables(betas)
  abar = np.cumprod(1 - betas)
  assert_close(tab["alphas_cumprod"], abar, rtol=1e-12)
  assert tab["alphas_cumprod_prev"][0] == 1.0
  # x0 from eps inverts q_sample exactly.
  assert_close(tab["sqrt_recip_alphas_cumprod"] * tab["sqrt_alphas_cumprod"],
               np.ones(T), rtol=1e-12)
  # Posterior variance is 1 / (1 / (1 - abar_{t-1}) + alpha_t / beta_t).
  alt = 1 / (1 / (1 - tab["alphas_cumprod_prev"][1:]) +
             tab["alphas"][1:] / betas[1:])
  assert_close(tab["posterior_variance"][1:], alt, rtol=1e-10)
  assert tab["posterior_variance"][0] == 0.0
  # The original clips log-variance at t = 0 to its value at t = 1.
  assert tab["posterior_log_variance_clipped"][0] == pytest.approx(
      np.log(tab["posterior_variance"][1]))
  assert tab["fixedlarge_log_variance"][0] == pytest.approx(
      np.log(tab["posterior_variance"][1]))
  assert_close(tab["fixedlarge_log_variance"][1:], np.log(betas[1:]),
               rtol=1e-12)


def test_original_code_schedules():
  assert_close(schedules.get_betas("const", 10), np.full(10, 0.02), rtol=0)
  assert_close(schedules.get_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1],
               rtol=1e-15)
  w = schedules.get_betas("warmup10", 100, beta_start=1e-4, beta_end=0.02)
  assert_close(w[:10], np.linspace(1e-4, 0.02, 10), rtol=1e-15)
  assert np.all(w[10:] == 0.02)
  w = schedules.get_betas("warmup50", 100)
  assert_close(w[:50], np.linspace(1e-4, 0.02, 50), rtol=1e-15)
  assert np.all(w[50:] == 0.02)


def test_custom_betas_and_errors():
  betas = np.linspace(1e-3, 0.05, 20)
  s = schedules.schedule_from_config("custom", 20, list(betas))
  assert_close(s.betas, betas.astype(np.float32), rtol=0)
  with pytest.raises(ValueError, match="unknown beta schedule 'nope'"):
    schedules.get_betas("nope", 10)
  with pytest.raises(ValueError, match="has 3 entries"):
    schedules.schedule_from_config("custom", 20, [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    schedules.make_schedule(np.array([0.1, 0.0]))


def test_config_options_reach_only_the_schedules_that_take_them():
  # A config carries beta_start/beta_end for every schedule; cosine takes
  # neither, const only beta_end.
  opts = dict(beta_start=1e-3, beta_end=0.05)
  cos = schedules.schedule_from_config("cosine", 50, **opts)
  assert_close(cos.betas, schedules.get_betas("cosine", 50).astype(np.float32),
               rtol=0)
  const = schedules.schedule_from_config("const", 50, **opts)
  assert np.all(np.asarray(const.betas) == np.float32(0.05))
  lin = schedules.schedule_from_config("linear", 50, **opts)
  assert_close(lin.betas, np.linspace(1e-3, 0.05, 50).astype(np.float32),
               rtol=0)
  with pytest.raises(ValueError, match=r"'cosine' takes no \['beta_start'\]"):
    schedules.get_betas("cosine", 50, beta_start=1e-3)


# --- diffusers DDPMScheduler ---------------------------------------------

DIFFUSERS_NAMES = [("linear", "linear"), ("quad", "scaled_linear"),
                   ("cosine", "squaredcos_cap_v2"),
                   ("sigmoid_geodiff", "sigmoid")]


@pytest.mark.parametrize("ours,theirs", DIFFUSERS_NAMES)
def test_betas_and_alphas_cumprod_match_diffusers(torch, ours, theirs):
  diffusers = pytest.importorskip("diffusers")
  ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs,
                                beta_start=1e-4, beta_end=0.02)
  sched = schedules.make_schedule(schedules.get_betas(ours, T))
  # diffusers builds betas in float32 (torch.linspace / float32 sigmoid);
  # ours are float64 rounded once, so they may differ by an ulp or two.
  assert_close(sched.betas, ref.betas.numpy(), rtol=1e-6, atol=0)
  # diffusers forms alphas = 1 - betas from float32 betas. Where beta is
  # near 1 (the clipped tail of 'cosine', beta = 0.999) that loses three
  # digits: the float32 rounding of 0.999 alone is 3e-5 of 1 - 0.999. Away
  # from that tail the cumprods agree to 1e-5; on it (beta > 0.5, cosine's
  # last steps) the documented bound for that cause is 5e-5.
  ref_abar = ref.alphas_cumprod.numpy()
  tail = np.asarray(sched.betas) > 0.5
  assert_close(np.asarray(sched.alphas_cumprod)[~tail], ref_abar[~tail],
               rtol=1e-5, atol=0)
  assert_close(np.asarray(sched.alphas_cumprod)[tail], ref_abar[tail],
               rtol=5e-5, atol=0)
  if theirs != "squaredcos_cap_v2":
    assert not tail.any()


# --- lucidrains GaussianDiffusion ----------------------------------------

LUCIDRAINS_NAMES = [("linear", "linear"), ("cosine", "cosine"),
                    ("sigmoid_alphabar", "sigmoid")]
LUCIDRAINS_TABLES = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"
]


def lucidrains_diffusion(torch, schedule, timesteps=T, objective="pred_noise",
                         channels=1):
  ddp = pytest.importorskip("denoising_diffusion_pytorch")
  from tests.reference_models import make_torch_model, toy_weights
  model = make_torch_model(torch, toy_weights(channels), channels)
  return ddp.GaussianDiffusion(model, image_size=4, timesteps=timesteps,
                               objective=objective, beta_schedule=schedule,
                               auto_normalize=False)


@pytest.mark.parametrize("ours,theirs", LUCIDRAINS_NAMES)
def test_tables_match_lucidrains(torch, ours, theirs):
  ref = lucidrains_diffusion(torch, theirs)
  betas = schedules.get_betas(ours, T)
  rtol = 1e-6  # both compute in float64 and round to float32 once
  if theirs == "sigmoid":
    # lucidrains evaluates sigmoid(start / tau) and sigmoid(end / tau) on
    # float32 tensors (torch.tensor of a Python float), which moves the
    # tail betas by up to 1.3e-5 relative. With those two constants rounded
    # to float32 our formula gives its betas to 1e-6 (checked here); the
    # float64 schedule is held to 3e-5 for that documented cause.
    sig = lambda z: 1 / (1 + np.exp(-z))
    v0, v1 = np.float32(sig(-3.0)), np.float32(sig(3.0))
    u = np.arange(T + 1) / T
    abar = (-sig(u * 6.0 - 3.0) + v1) / (v1 - v0)
    mirrored = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    assert_close(mirrored, ref.betas.numpy(), rtol=1e-6)
    rtol = 3e-5
  sched = schedules.make_schedule(betas)
  for name in LUCIDRAINS_TABLES:
    assert_close(getattr(sched, name), getattr(ref, name).numpy(), rtol=rtol,
                 atol=1e-30, err_msg=name)
  # lucidrains clamps the t=0 posterior variance to 1e-20 before the log;
  # the original (and we) use the t=1 value there. Equal from t=1 on.
  assert_close(sched.posterior_log_variance_clipped[1:],
               ref.posterior_log_variance_clipped.numpy()[1:], rtol=rtol)
