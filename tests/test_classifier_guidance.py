"""Classifier guidance: the noise-aware classifier trains, its gradient is
right (finite differences), the guided eps is Dhariwal & Nichol's
Algorithm 2 formula, and guidance raises the classifier's log-probability
of the requested class in the samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import checkpoints, from_config, guidance, train, validation
from ddpm_jax.run import classifier_training
from ddpm_jax.samplers import generate
from ddpm_jax.models.classifier import log_prob_fn
from tests.reference_models import assert_close, assert_close_to_terms
from tests.tiny_configs import tiny_digits_config


# Every test here uses the classifier the module fixture trains.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  from configs import digits_classifier
  config = digits_classifier.get_config()
  config.diffusion.num_timesteps = 20
  config.training.num_steps = 40
  config.training.log_every = 20
  wd = str(tmp_path_factory.mktemp("clf"))
  accuracy = classifier_training.train_classifier(config, wd)
  return wd, accuracy


def test_classifier_learns_the_digits(classifier_dir):
  _, accuracy = classifier_dir
  assert accuracy[0] > 0.6, accuracy  # chance is 0.1


def test_classifier_gradient_matches_finite_differences(classifier_dir):
  _, classifier, params = checkpoints.load_classifier(
      classifier_dir[0])
  log_prob = log_prob_fn(classifier)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t, y = jnp.asarray([3, 15]), jnp.asarray([4, 7])
  f = jax.jit(lambda x: jnp.sum(log_prob(params, x, t, y)))
  grad = jax.jit(jax.grad(f))(x)
  for seed in range(3):
    v = jax.random.normal(jax.random.PRNGKey(10 + seed), x.shape)
    v = v / jnp.linalg.norm(v)
    h = 1e-2
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd),
                               rtol=2e-2, atol=1e-3)


def test_guided_eps_is_algorithm_2(classifier_dir):
  clf_config, classifier, clf_params = checkpoints.load_classifier(
      classifier_dir[0])
  config = tiny_digits_config(num_timesteps=20, batch_size=4, one_level=True)
  model = from_config.make_model(config)
  state = train.create_train_state(config, model,
                                   from_config.make_optimizer(config))
  params = jax.tree_util.tree_map(
      lambda a: a + 0.01 * jnp.ones_like(a), state.params)  # non-zero eps
  sched = from_config.make_schedule(config)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  t, y = jnp.asarray([0, 9, 19]), jnp.asarray([1, 2, 3])
  b = {"params": params, "classifier": clf_params, "labels": y,
       "guidance": jnp.float32(3.0),
       "sqrt_one_minus_alphas_cumprod": sched.sqrt_one_minus_alphas_cumprod}
  got = jax.jit(guidance.classifier_guided_fn(model, classifier, 1))(b, x, t)
  eps = jax.jit(model.apply)({"params": params}, x, t)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(log_prob_fn(classifier)(
      clf_params, z, t, y))))(x)
  sigma = np.sqrt(1 - np.cumprod(1 - from_config.make_betas(config)))[
      np.asarray(t)].reshape(-1, 1, 1, 1)
  assert float(jnp.max(jnp.abs(grad))) > 0
  assert_close(got, eps - sigma * 3.0 * grad, rtol=1e-5, atol=1e-6)


def test_guided_eps_clips_x0_before_guidance(classifier_dir):
  """With clipping, the model's x_0 estimate is clipped and eps re-derived
  from it before the guidance term (guided_diffusion's order), in float64
  here; then the sampler must not clip again."""
  _, classifier, clf_params = checkpoints.load_classifier(
      classifier_dir[0])
  config = tiny_digits_config(num_timesteps=20, batch_size=4, one_level=True)
  model = from_config.make_model(config)
  params = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jnp.ones_like(a), train.create_train_state(
          config, model, from_config.make_optimizer(config)).params)
  sched = from_config.make_schedule(config)
  x = 1.5 * jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 1))
  t, y = jnp.asarray([1, 9, 19]), jnp.asarray([1, 2, 3])
  b = {"params": params, "classifier": clf_params, "labels": y,
       "guidance": jnp.float32(2.0),
       "sqrt_alphas_cumprod": sched.sqrt_alphas_cumprod,
       "sqrt_one_minus_alphas_cumprod": sched.sqrt_one_minus_alphas_cumprod}
  got = jax.jit(guidance.classifier_guided_fn(model, classifier, 1, True))(
      b, x, t)
  eps = np.asarray(jax.jit(model.apply)({"params": params}, x, t),
                   np.float64)
  grad = np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(log_prob_fn(
      classifier)(clf_params, z, t, y))))(x), np.float64)
  abar = np.cumprod(1 - from_config.make_betas(config))[
      np.asarray(t)].reshape(-1, 1, 1, 1)
  xt = np.asarray(x, np.float64)
  x0 = (xt - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
  assert np.mean(np.abs(x0) > 1) > 0.1  # the clip is exercised
  eps_clipped = (xt - np.sqrt(abar) * np.clip(x0, -1, 1)) / np.sqrt(1 - abar)
  want = eps_clipped - np.sqrt(1 - abar) * 2.0 * grad
  assert_close_to_terms(got, want, np.abs(xt) / np.sqrt(1 - abar) +
                        np.abs(want))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_at_scale_0_is_the_clipped_sampler(
    classifier_dir, sampler):
  """Scale 0: the guided path (clip inside apply_fn, sampler unclipped)
  draws what the plain clipped sampler draws from the same keys."""
  wd, _ = classifier_dir
  config = tiny_digits_config(num_timesteps=20, batch_size=4, one_level=True)
  config.sampling.sampler, config.sampling.steps = sampler, 10
  # DDIM's direction term then uses the eps of the clipped x_0, as the
  # guided path does.
  config.sampling.rederive_eps = True
  model = from_config.make_model(config)
  params = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jnp.ones_like(a), train.create_train_state(
          config, model, from_config.make_optimizer(config)).params)
  plain = generate.generate(config, model, params, 4, 4, seed=3)
  config.sampling.classifier, config.sampling.guidance = wd, 0.0
  config.sampling.label = 5
  guided = generate.generate(config, model, params, 4, 4, seed=3)
  assert np.mean(np.abs(plain) >= 1) > 0  # clipping mattered somewhere
  assert_close(guided, plain, rtol=1e-4, atol=1e-4)


def test_guidance_raises_the_requested_class(classifier_dir, tmp_path):
  """An almost untrained unconditional model, guided toward class 3 at a
  large scale: the classifier finds class 3 far more likely in the guided
  samples than in unguided ones (same noise)."""
  wd, _ = classifier_dir
  config = tiny_digits_config(num_timesteps=20, batch_size=4, one_level=True)
  model = from_config.make_model(config)
  state = train.create_train_state(config, model,
                                   from_config.make_optimizer(config))
  _, classifier, clf_params = checkpoints.load_classifier(wd)
  config.sampling.classifier = wd
  config.sampling.label = 3
  log_prob = jax.jit(log_prob_fn(classifier))
  logp = {}
  for scale in (0.0, 30.0):
    config.sampling.guidance = scale
    x = generate.generate(config, model, state.params, 16, 16, seed=0)
    logp[scale] = float(jnp.mean(log_prob(
        clf_params, jnp.asarray(x), jnp.zeros((16,), jnp.int32),
        jnp.full((16,), 3))))
  assert logp[30.0] > logp[0.0] + 1.0, logp


def test_classifier_guidance_config_errors(classifier_dir):
  config = tiny_digits_config(num_timesteps=20, batch_size=4, one_level=True)
  config.sampling.classifier = classifier_dir[0]
  config.model.num_classes = 10
  with pytest.raises(from_config.ConfigError, match="sampling.classifier"):
    validation.validate_config(config)
  config = tiny_digits_config(num_timesteps=10, batch_size=4,
                              one_level=True)  # other T
  config.sampling.classifier = classifier_dir[0]
  config.sampling.guidance = 1.0
  model = from_config.make_model(config)
  with pytest.raises(from_config.ConfigError, match="noise schedule"):
    generate.generate(config, model, train.create_train_state(
        config, model, from_config.make_optimizer(config)).params, 2, 2, 0)
  with pytest.raises(FileNotFoundError, match="train_classifier.py"):
    checkpoints.load_classifier("/nonexistent/clf")
