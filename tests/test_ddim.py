"""DDIM and respaced sampling: timestep spacings and DDIMScheduler.step
against diffusers, the DDIM chain against lucidrains, per step with
injected noise; respacing that keeps every step is the plain chain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, schedules
from ddpm_jax.samplers import registry
from ddpm_jax.samplers import ancestral, ddim, spacing
from tests.reference_models import (assert_close, assert_close_to_terms,
                                    make_torch_model, nhwc, toy_apply_jax,
                                    toy_weights)

T = 1000
C = 3
BETAS = schedules.get_betas("linear", T)
TABLES = schedules.schedule_tables(BETAS)


@pytest.fixture(scope="module")
def sched():
  return schedules.make_schedule(BETAS)


@pytest.fixture(scope="module")
def toy():
  return {k: jnp.asarray(v) for k, v in toy_weights(C).items()}


@pytest.mark.parametrize("name", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 30, 50, 333, 1000])
def test_spacings_match_diffusers_set_timesteps(name, steps):
  diffusers = pytest.importorskip("diffusers")
  ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=name)
  ref.set_timesteps(steps)
  np.testing.assert_array_equal(spacing.timesteps(name, T, steps),
                                ref.timesteps.numpy())


def test_original_ddim_spacings():
  # ermongroup/ddim: range(0, T, T // S) and int(linspace(0, sqrt(.8 T),
  # S) ** 2), visited in reverse.
  np.testing.assert_array_equal(spacing.timesteps("uniform", T, 50),
                                np.arange(0, 1000, 20)[::-1])
  assert len(spacing.timesteps("uniform", T, 30)) == 31  # the quirk
  quad = spacing.timesteps("quadratic", T, 10)
  want = [int(s) for s in np.linspace(0, np.sqrt(800), 10) ** 2][::-1]
  np.testing.assert_array_equal(quad, want)
  t, prev = spacing.timestep_pairs("quadratic", T, 10)
  np.testing.assert_array_equal(prev, list(want[1:]) + [-1])
  with pytest.raises(ValueError, match="repeats timesteps"):
    spacing.timesteps("quadratic", T, 500)
  with pytest.raises(ValueError, match="steps must be in"):
    spacing.timesteps("leading", T, 0)


def diffusers_ddim_float64(diffusers, torch, name, steps, clip, prediction,
                           set_alpha_to_one):
  """A DDIMScheduler on our float64 alpha-bar, run in float64."""
  ref = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=clip,
                                timestep_spacing=name,
                                prediction_type=prediction,
                                set_alpha_to_one=set_alpha_to_one)
  ref.alphas_cumprod = torch.from_numpy(TABLES["alphas_cumprod"])
  ref.final_alpha_cumprod = torch.tensor(
      1.0 if set_alpha_to_one else TABLES["alphas_cumprod"][0],
      dtype=torch.float64)
  ref.set_timesteps(steps)
  return ref


CASES = [(name, eta, clip, "epsilon", False, True)
         for name in ("leading", "trailing", "linspace")
         for eta in (0.0, 1.0) for clip in (True, False)] + [
             ("leading", 0.5, True, "v_prediction", False, True),
             ("trailing", 1.0, True, "sample", False, False),
             ("linspace", 0.3, True, "epsilon", True, False),
             ("trailing", 0.0, False, "v_prediction", False, False)]


@pytest.mark.parametrize("name,eta,clip,prediction_type,rederive,alpha_one",
                         CASES)
def test_ddim_step_matches_diffusers(torch, sched, toy, name, eta, clip,
                                     prediction_type, rederive, alpha_one):
  """Every step of a 50-step plan, each from its own x_t, with the same
  noise; diffusers evaluated in float64 on our tables (the formulas, not
  float32 rounding in another order, are compared)."""
  diffusers = pytest.importorskip("diffusers")
  steps = 50
  ref = diffusers_ddim_float64(diffusers, torch, name, steps, clip,
                               prediction_type, alpha_one)
  plan = ddim.make_plan(BETAS, steps, eta=eta, spacing_name=name,
                        set_alpha_to_one=alpha_one)
  np.testing.assert_array_equal(np.asarray(plan.t), ref.timesteps.numpy())
  prediction = {"epsilon": "eps", "v_prediction": "v",
                "sample": "x0"}[prediction_type]
  torch_model = make_torch_model(torch, toy_weights(C), C).double()
  step = jax.jit(lambda x, t, i, out, z: ddim.ddim_step(
      sched, x, t, plan.sqrt_alphas_cumprod_prev[i], plan.direction_coef[i],
      plan.sigma[i], out, z, prediction=prediction, clip_denoised=clip,
      rederive_eps=rederive))
  g = torch.Generator().manual_seed(0)
  for i, t in enumerate(ref.timesteps.tolist()):
    x_t = torch.randn((4, C, 6, 6), generator=g, dtype=torch.float64)
    z = torch.randn((4, C, 6, 6), generator=g, dtype=torch.float64)
    out = torch_model(x_t, torch.full((4,), t))
    want = ref.step(out, t, x_t, eta=eta, variance_noise=z,
                    use_clipped_model_output=rederive)
    x_prev, x0 = step(jnp.asarray(nhwc(x_t), jnp.float32), t, i,
                      jnp.asarray(nhwc(out), jnp.float32),
                      jnp.asarray(nhwc(z), jnp.float32))
    # x_0 from eps or v at large t is a difference of terms ~1/sqrt(abar)
    # times x_t: rounding is relative to those terms.
    a = TABLES["alphas_cumprod"][t]
    scale = (np.abs(nhwc(x_t)) + np.abs(nhwc(out))) / np.sqrt(a)
    assert_close_to_terms(x0, nhwc(want.pred_original_sample), scale,
                          err_msg=f"x0, t={t}")
    assert_close_to_terms(x_prev, nhwc(want.prev_sample),
                          scale * np.sqrt(a) + 1.0, err_msg=f"x_prev, t={t}")


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("objective,prediction", [("pred_noise", "eps"),
                                                  ("pred_v", "v")])
def test_ddim_chain_matches_lucidrains(torch, sched, monkeypatch, eta,
                                       objective, prediction):
  """lucidrains' ddim_sample (clipped x_0, eps rederived from it, pairs
  (t, t - T/S) ending at -1) is our 'trailing' plan with rederive_eps.
  Its chain is run with injected noise; each of our steps starts from its
  state and must land on its next state."""
  ddp = pytest.importorskip("denoising_diffusion_pytorch")
  steps = 50
  weights = toy_weights(C)
  ref = ddp.GaussianDiffusion(make_torch_model(torch, weights, C),
                              image_size=6, timesteps=T,
                              sampling_timesteps=steps, beta_schedule="linear",
                              ddim_sampling_eta=eta, auto_normalize=False,
                              objective=objective)
  assert ref.is_ddim_sampling
  g = torch.Generator().manual_seed(3)
  x_T = torch.randn((2, C, 6, 6), generator=g)
  zs = [torch.randn((2, C, 6, 6), generator=g) for _ in range(steps)]
  drawn = []

  def fake_randn_like(x):
    drawn.append(zs[len(drawn)])
    return drawn[-1].clone()

  monkeypatch.setattr(torch, "randn", lambda *a, **k: x_T.clone())
  monkeypatch.setattr(torch, "randn_like", fake_randn_like)
  chain = ref.ddim_sample((2, C, 6, 6), return_all_timesteps=True)
  monkeypatch.undo()
  assert chain.shape[1] == steps + 1
  np.testing.assert_array_equal(chain[:, 0].numpy(), x_T.numpy())

  plan = ddim.make_plan(BETAS, steps, eta=eta, spacing_name="trailing")
  params = {k: jnp.asarray(v) for k, v in weights.items()}
  step = jax.jit(lambda x, i, z: ddim.ddim_step(
      sched, x, plan.t[i], plan.sqrt_alphas_cumprod_prev[i],
      plan.direction_coef[i], plan.sigma[i],
      toy_apply_jax(params, x, jnp.full((2,), plan.t[i])), z,
      prediction=prediction, clip_denoised=True, rederive_eps=True)[0])
  for i in range(steps):
    z = zs[i] if i < len(drawn) else torch.zeros_like(x_T)
    got = step(jnp.asarray(nhwc(chain[:, i])), i, jnp.asarray(nhwc(z)))
    assert_close(got, nhwc(chain[:, i + 1]), rtol=1e-5, atol=1e-5,
                 err_msg=f"step {i}, t={int(plan.t[i])}")


def test_ddim_eta_one_over_every_step_is_ancestral_fixedsmall(sched, toy):
  """DDIM eq. 16 with eta = 1 and S = T is the posterior q(x_{t-1} | x_t,
  x_0) of eq. 7: the same step as p_sample_step with beta~ (our own
  eq. 7 code), per step. Both clip x_0; the posterior mean then implies the
  eps of the clipped x_0, hence rederive_eps."""
  plan = ddim.make_plan(BETAS, T, eta=1.0, spacing_name="leading")
  step = jax.jit(lambda x, i, z: ddim.ddim_step(
      sched, x, plan.t[i], plan.sqrt_alphas_cumprod_prev[i],
      plan.direction_coef[i], plan.sigma[i],
      toy_apply_jax(toy, x, jnp.full((2,), plan.t[i])), z,
      rederive_eps=True)[0])
  rng = np.random.default_rng(0)
  for i in [0, 1, 500, 990, 997, 998, 999]:
    t = int(plan.t[i])
    x = jnp.asarray(rng.normal(size=(2, 6, 6, C)), jnp.float32)
    z = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    want, _ = diffusion.p_sample_step(toy, toy_apply_jax, sched, x, t,
                                      noise=z, variance="fixedsmall")
    assert_close(step(x, i, z), want, rtol=1e-5, atol=2e-6,
                 err_msg=f"t={t}")


def test_respacing_that_keeps_every_step_is_the_plain_chain(sched, toy):
  respaced, kept = spacing.respaced_schedule(BETAS, np.arange(T))
  for field in ("betas", "alphas_cumprod", "posterior_mean_coef1",
                "posterior_mean_coef2", "fixedlarge_log_variance"):
    np.testing.assert_array_equal(getattr(respaced, field),
                                  getattr(sched, field), err_msg=field)
  key = jax.random.PRNGKey(4)
  shape = (2, 6, 6, C)
  plain, _ = ancestral.sample(toy, toy_apply_jax, sched, key, shape,
                              variance="fixedlarge")
  via, _ = registry.get_sampler("ddpm")(toy, toy_apply_jax, BETAS, key,
                                        shape, steps=T,
                                        variance="fixedlarge")
  mapped, _ = ancestral.sample(toy, toy_apply_jax, respaced, key, shape,
                               variance="fixedlarge",
                               timestep_map=jnp.asarray(kept, jnp.int32))
  np.testing.assert_array_equal(np.asarray(via), np.asarray(plain))
  np.testing.assert_array_equal(np.asarray(mapped), np.asarray(plain))


def test_respaced_schedule_keeps_the_marginals():
  kept = spacing.timesteps("linspace", T, 25)
  respaced, order = spacing.respaced_schedule(BETAS, kept)
  np.testing.assert_array_equal(order, np.sort(kept))
  # abar of the short chain at index i is abar of training step kept[i].
  np.testing.assert_allclose(np.asarray(respaced.alphas_cumprod),
                             TABLES["alphas_cumprod"][order], rtol=1e-6)


def test_respaced_ancestral_calls_the_network_at_the_kept_timesteps(sched):
  seen = []

  def recording_apply(params, x, t, rng=None):
    jax.debug.callback(lambda t: seen.append(int(t[0])), t)
    return jnp.zeros_like(x)

  registry.get_sampler("ddpm")(None, recording_apply, BETAS,
                               jax.random.PRNGKey(0), (1, 2, 2, 1), steps=10,
                               spacing_name="linspace")
  jax.effects_barrier()
  assert seen == list(spacing.timesteps("linspace", T, 10))


def test_sampler_registry_and_errors(toy):
  assert registry.sampler_names() == ["ddim", "ddpm"]
  with pytest.raises(ValueError, match="unknown sampler"):
    registry.get_sampler("euler")
  with pytest.raises(TypeError, match="eta"):  # DDIM's option, not ddpm's
    registry.get_sampler("ddpm")(toy, toy_apply_jax, BETAS,
                                 jax.random.PRNGKey(0), (1, 6, 6, C), eta=1.0)
  with pytest.raises(ValueError, match="steps must be in"):
    registry.get_sampler("ddim")(toy, toy_apply_jax, BETAS,
                                 jax.random.PRNGKey(0), (1, 6, 6, C),
                                 steps=T + 1)
  with pytest.raises(ValueError, match="eta must be >= 0"):
    registry.get_sampler("ddim")(toy, toy_apply_jax, BETAS,
                                 jax.random.PRNGKey(0), (1, 6, 6, C),
                                 steps=10, eta=-1.0)


def test_ddim_trajectory_every_k_steps(toy):
  x, traj = registry.get_sampler("ddim")(
      toy, toy_apply_jax, BETAS, jax.random.PRNGKey(1), (2, 6, 6, C),
      steps=20, return_every=5)
  assert traj["x_t"].shape == (4, 2, 6, 6, C)
  assert traj["x0"].shape == (4, 2, 6, 6, C)
  np.testing.assert_array_equal(traj["t"], [750, 500, 250, 0])
  np.testing.assert_array_equal(traj["x_t"][-1], x)


def test_ddim_through_the_registry_follows_eq_12_at_eta_half(toy):
  """DDIM as sample.py calls it (the registry), eta = 0.5, against the
  DDIM paper's eq. 12 with sigma of eq. 16, per step in float64 from the
  chain's own states and noise: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev
  - sigma^2) eps + sigma z, sigma = eta sqrt((1 - a_prev) / (1 - a_t))
  sqrt(1 - a_t / a_prev)."""
  from ddpm_jax.samplers import chain
  key, shape, steps, eta = jax.random.PRNGKey(4), (2, 6, 6, C), 10, 0.5
  _, traj = registry.get_sampler("ddim")(
      toy, toy_apply_jax, BETAS, key, shape, steps=steps, eta=eta,
      clip_denoised=False, return_every=1)
  ts = spacing.timesteps("uniform", T, steps)  # 900, 800, ..., 0
  abar = np.cumprod(1.0 - BETAS.astype(np.float64))
  noise = chain.ExampleNoise(key, shape)
  x = np.asarray(noise.initial(), np.float64)
  apply = jax.jit(toy_apply_jax)
  for i, t in enumerate(ts):
    a_t = abar[t]
    a_prev = abar[ts[i + 1]] if i + 1 < steps else 1.0
    eps = np.asarray(apply(toy, jnp.asarray(x, jnp.float32),
                           jnp.full((2,), t)), np.float64)
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(
        1 - a_t / a_prev)
    z = np.asarray(noise.at(i), np.float64)
    want = (np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps +
            sigma * z)
    assert_close(traj["x_t"][i], want, rtol=1e-5, atol=1e-5,
                 err_msg=f"step {i}, t={t}")
    x = np.asarray(traj["x_t"][i], np.float64)  # the chain's own state
  assert sigma == 0.0 and i == steps - 1  # the last step adds no noise
