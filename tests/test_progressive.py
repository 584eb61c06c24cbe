"""Paper Figs. 6-8: progressive trajectories, reverse chains from a partly
noised image, interpolation in x_t; shapes, endpoints and shared noise."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ddpm_jax import diffusion, images, schedules
from ddpm_jax.samplers import registry
from ddpm_jax.samplers import figures
from ddpm_jax.samplers.ancestral import reverse_chain
from tests.reference_models import toy_apply_jax, toy_weights

T = 20
BETAS = schedules.get_betas("linear", T, beta_end=0.2)
SCHED = schedules.make_schedule(BETAS)
PARAMS = {k: jnp.asarray(v) for k, v in toy_weights(1).items()}


def pair():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.uniform(-1, 1, (6, 6, 1)), jnp.float32),
          jnp.asarray(rng.uniform(-1, 1, (6, 6, 1)), jnp.float32))


def test_interpolation_at_t0_returns_the_endpoints():
  a, b = pair()
  out = figures.interpolate(PARAMS, toy_apply_jax, SCHED, a, b,
                            jnp.asarray([0.0, 0.25, 1.0]), 0,
                            jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out[0], a)
  np.testing.assert_array_equal(out[2], b)
  np.testing.assert_allclose(out[1], 0.75 * a + 0.25 * b, rtol=1e-6,
                             atol=1e-7)


def test_interpolation_decodes_every_lambda_with_the_same_noise():
  a, b = pair()
  key = jax.random.PRNGKey(1)
  many = figures.interpolate(PARAMS, toy_apply_jax, SCHED, a, b,
                             jnp.linspace(0, 1, 5), 12, key)
  assert many.shape == (5, 6, 6, 1) and np.all(np.isfinite(many))
  # lambda 0 alone, and lambda 1 with a == b swapped in: the same latents
  # and the same reverse noise, so the same decodings.
  one = figures.interpolate(PARAMS, toy_apply_jax, SCHED, a, b,
                            jnp.asarray([0.0]), 12, key)
  np.testing.assert_allclose(one[0], many[0], rtol=1e-6, atol=1e-7)
  # By hand: encode a at step 12 (code index 11), decode with one row of
  # noise shared by every lambda.
  key_a, _, key_p = jax.random.split(key, 3)
  x_a = diffusion.q_sample(SCHED, a[None], jnp.asarray([11]),
                           jax.random.normal(key_a, (1, 6, 6, 1)))
  from ddpm_jax.samplers.chain import ExampleNoise
  noise = ExampleNoise(key_p, (1, 6, 6, 1))
  want, _ = reverse_chain(PARAMS, toy_apply_jax, SCHED, x_a, noise.at, True,
                          "fixedlarge", "x0", 0, num_steps=12)
  np.testing.assert_allclose(many[0], want[0], rtol=1e-5, atol=1e-6)


def test_partial_chain_shares_x_t_and_differs_in_the_reverse_noise():
  a, b = pair()
  x0 = jnp.stack([a, b])
  x_t, out = figures.partial_chain(PARAMS, toy_apply_jax, SCHED, x0, 10,
                                   jax.random.PRNGKey(2), 3)
  assert x_t.shape == (2, 6, 6, 1) and out.shape == (2, 3, 6, 6, 1)
  assert not np.allclose(out[0, 0], out[0, 1])  # different chains
  same, none = figures.partial_chain(PARAMS, toy_apply_jax, SCHED, x0, 0,
                                     jax.random.PRNGKey(2), 3)
  np.testing.assert_array_equal(same, x0)
  np.testing.assert_array_equal(none, jnp.repeat(x0[:, None], 3, axis=1))
  with pytest.raises(ValueError, match="t must be in"):
    figures.partial_chain(PARAMS, toy_apply_jax, SCHED, x0, T + 1,
                          jax.random.PRNGKey(2), 3)


def test_progression_files(tmp_path):
  x, traj = registry.get_sampler("ddpm")(
      PARAMS, toy_apply_jax, BETAS, jax.random.PRNGKey(3), (3, 6, 6, 1),
      return_every=4)
  prefix = str(tmp_path / "prog")
  images.write_progression(prefix, jax.device_get(traj), scale=2)
  for suffix in ("_x0.png", "_xt.png", ".gif", "_trajectory.npz"):
    assert os.path.getsize(prefix + suffix) > 0, suffix
  saved = np.load(prefix + "_trajectory.npz")
  assert saved["x_t"].shape == (5, 3, 6, 6, 1)
  np.testing.assert_array_equal(saved["t"], [16, 12, 8, 4, 0])
  np.testing.assert_array_equal(saved["x_t"][-1], images.to_uint8(x))
  gif = Image.open(prefix + ".gif")
  assert gif.n_frames == 5
  strip = Image.open(prefix + "_x0.png")
  # 3 rows (samples) of 5 columns (times), 12-pixel cells, 1-pixel pads.
  assert strip.size == (5 * 13 + 1, 3 * 13 + 1)
