"""The lax.scan sampler: equals repeated p_sample_step, compiles once."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, schedules
from ddpm_jax.samplers.ancestral import sample
from tests.reference_models import assert_close, toy_apply_jax, toy_weights

SHAPE = (3, 4, 4, 2)


def toy():
  return {k: jnp.asarray(v) for k, v in toy_weights(2).items()}


def test_scan_equals_step_by_step_chain():
  sched = schedules.make_schedule(schedules.get_betas("linear", 20, beta_end=0.2))
  key = jax.random.PRNGKey(4)
  x, traj = sample(toy(), toy_apply_jax, sched, key, SHAPE, return_every=5,
                   variance="fixedsmall")
  # Row b's key is fold_in(key, b); split into x_T's and the steps' keys.
  rows = [jax.random.split(jax.random.fold_in(key, b))
          for b in range(SHAPE[0])]
  y = jnp.stack([jax.random.normal(k[0], SHAPE[1:]) for k in rows])
  states, x0s = {}, {}
  for t in range(19, -1, -1):
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(k[1], t),
                                         SHAPE[1:]) for k in rows])
    y, x0 = diffusion.p_sample_step(toy(), toy_apply_jax, sched, y, t,
                                    noise=noise, variance="fixedsmall")
    states[t], x0s[t] = y, x0
  assert_close(x, y)
  np.testing.assert_array_equal(traj["t"], [15, 10, 5, 0])
  for i, t in enumerate([15, 10, 5, 0]):
    assert_close(traj["x_t"][i], states[t])
    assert_close(traj["x0"][i], x0s[t])
  # Same key, same samples; without the trajectory, same final x.
  x2, empty = sample(toy(), toy_apply_jax, sched, key, SHAPE,
                     variance="fixedsmall")
  assert empty == {}
  np.testing.assert_array_equal(x, x2)
  # Sample j depends on its index, not on the batch it is drawn in.
  tail, _ = sample(toy(), toy_apply_jax, sched, key, (1,) + SHAPE[1:],
                   variance="fixedsmall", offset=SHAPE[0] - 1)
  np.testing.assert_array_equal(tail[0], x[-1])


def _compiled_instructions(num_timesteps):
  """Number of HLO instructions in the compiled sampler.

  Instructions, not lines: the text also lists the source files, functions
  and stack frames the program came from, which vary with the caller's
  stack and with whether the executable was loaded from the persistent
  compile cache (a cache hit for one T and not the other once made the
  line counts differ by 7).
  """
  sched = schedules.make_schedule(schedules.get_betas("linear", num_timesteps))
  text = sample.lower(toy(), toy_apply_jax, sched, jax.random.PRNGKey(0),
                      SHAPE).compile().as_text()
  return len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", text, flags=re.MULTILINE))


def test_sampler_compiles_once_whatever_t():
  # The compiled program is the same size for T = 10 and T = 1000: the
  # chain is one loop, not unrolled. (A compile-time comparison stood here
  # until 2026-12-03; at ~1 ms per compile it failed under load.)
  assert _compiled_instructions(1000) == _compiled_instructions(10) > 100
  # And the program does not grow with T: one model call in the loop body.
  s10 = schedules.make_schedule(schedules.get_betas("linear", 10))
  s1000 = schedules.make_schedule(schedules.get_betas("linear", 1000))
  count = lambda s: str(jax.make_jaxpr(
      lambda p, k: sample(p, toy_apply_jax, s, k, SHAPE))(
          toy(), jax.random.PRNGKey(0))).count("tanh")
  assert count(s10) == count(s1000) == 1


def visited(sampler, *args, **options):
  """The timesteps the network is called at, in order, and the result."""
  seen = []

  def spy(params, x, t, rng=None):
    jax.debug.callback(lambda t: seen.append(int(t[0])), t)
    return toy_apply_jax(params, x, t, rng)

  out = sampler(toy(), spy, *args, **options)
  jax.effects_barrier()
  return seen, out


def test_every_sampler_visits_its_timesteps_down_to_zero():
  from ddpm_jax.samplers import registry
  from ddpm_jax.samplers import spacing
  betas = schedules.get_betas("linear", 12, beta_end=0.2)
  sched = schedules.make_schedule(betas)
  key = jax.random.PRNGKey(0)
  for every in (0, 4):
    seen, _ = visited(sample, sched, key, SHAPE, return_every=every)
    assert seen == list(range(11, -1, -1)), every
  for name in ("ddpm", "ddim"):
    seen, _ = visited(registry.get_sampler(name), betas, key, SHAPE)
    assert seen == list(range(11, -1, -1)), name
    seen, _ = visited(registry.get_sampler(name), betas, key, SHAPE,
                      steps=4, spacing_name="trailing")
    assert seen == list(spacing.timesteps("trailing", 12, 4)), name
    assert seen[-1] == 2 and seen[0] == 11


def test_respaced_steps_use_the_kept_timesteps_alpha_bar():
  # Each step of a respaced chain predicts x_0 from x_t with alpha-bar of
  # the training timestep it visits: with eps-prediction and no clipping,
  # x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), abar = abar_T[kept_i].
  from ddpm_jax.samplers import registry
  from ddpm_jax.samplers import spacing
  betas = schedules.get_betas("linear", 30, beta_end=0.3)
  abar = np.cumprod(1.0 - betas)
  kept = spacing.timesteps("linspace", 30, 5)
  seen, (x, traj) = visited(registry.get_sampler("ddpm"), betas,
                            jax.random.PRNGKey(1), SHAPE, steps=5,
                            spacing_name="linspace", return_every=1,
                            clip_denoised=False)
  assert seen == list(kept)
  np.testing.assert_array_equal(traj["t"], kept)
  np.testing.assert_array_equal(traj["x_t"][-1], x)
  for i in range(1, len(kept)):
    x_t = np.asarray(traj["x_t"][i - 1], np.float64)
    t = np.full((SHAPE[0],), kept[i])
    eps = np.asarray(toy_apply_jax(toy(), jnp.asarray(x_t, jnp.float32), t),
                     np.float64)
    a = abar[kept[i]]
    want = (x_t - np.sqrt(1.0 - a) * eps) / np.sqrt(a)
    np.testing.assert_allclose(traj["x0"][i], want, rtol=1e-5, atol=1e-6)
