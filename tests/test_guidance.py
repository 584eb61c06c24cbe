"""Class-conditional U-Net and classifier-free guidance: the guided output
is eq. 6 of Ho & Salimans on the two passes, label dropout, training and
sampling end to end, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, from_config, guidance, train, validation
from ddpm_jax.samplers import generate
from tests.reference_models import assert_close
from tests.tiny_configs import tiny_digits_config


def conditional_config():
  config = tiny_digits_config(num_timesteps=10, batch_size=8, num_samples=4,
                              one_level=True)
  config.model.num_classes = 10
  return config


@pytest.fixture(scope="module")
def trained():
  config = conditional_config()
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  state = train.create_train_state(config, model, tx)
  step = jax.jit(functools.partial(
      train.train_step, apply_fn=guidance.conditional_fn(model), tx=tx,
      ema_decay=0.5, loss_options=from_config.objective_options(config),
      num_classes=10, label_dropout=0.5))
  batches = data.create_input_iter(config)
  for _ in range(2):
    batch, _ = next(batches)
    state, metrics = step(state, jax.tree_util.tree_map(jnp.asarray, batch),
                          from_config.make_schedule(config))
    assert bool(metrics["finite"])
  return config, model, state


def live(params):
  """``params`` with random values in the kernels initialised to zero
  (each residual block's last conv, attention's output, conv_out; after
  two small steps still below 1e-2), so that every path, the label's
  included, reaches the output."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      0.1 * jax.random.normal(k, a.shape)
      if a.ndim > 1 and np.max(np.abs(np.asarray(a))) < 1e-2 else a
      for k, a in zip(keys, leaves)])


def test_batches_carry_the_digits_labels():
  config = conditional_config()
  batch, _ = next(data.create_input_iter(config))
  assert batch["image"].shape == (8, 8, 8, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
  # The labels are those of the images: look each image up in the split.
  images, labels = data.digits_images("train"), data.digits_labels("train")
  for img, lab in zip(batch["image"], batch["label"]):
    rows = np.flatnonzero(np.all(images == img, axis=(1, 2, 3)))
    assert lab in labels[rows]


@pytest.mark.slow
def test_label_embedding_changes_the_output(trained):
  config, model, state = trained
  # conv_out starts at zero; a random one makes every path visible.
  params = live(state.params)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t = jnp.asarray([3, 3])
  apply = guidance.conditional_fn(model)
  out = [apply(guidance.bundle(params, jnp.asarray([k, k])), x, t)
         for k in (0, 7, 10)]
  assert np.max(np.abs(out[0] - out[1])) > 1e-3
  # labels=None is the null class (10).
  np.testing.assert_array_equal(model.apply({"params": params}, x, t), out[2])


@pytest.mark.slow
def test_cfg_is_eq6_of_the_two_passes(trained):
  config, model, state = trained
  params = live(state.params)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  t = jnp.asarray([0, 4, 9])
  labels = jnp.asarray([1, 5, 9])
  # The two passes as cfg_fn runs them: one batch of 2B (XLA's CPU
  # convolutions round differently for a batch of B, by ~1e-6, which eq. 6
  # multiplies by up to 1 + 2w).
  both = guidance.conditional_fn(model)(
      guidance.bundle(params, jnp.concatenate([labels, jnp.full((3,), 10)])),
      jnp.concatenate([x, x]), jnp.concatenate([t, t]))
  cond, uncond = both[:3], both[3:]
  assert np.max(np.abs(cond - uncond)) > 1e-3
  for w in (0.0, 1.0, 3.5):
    got = guidance.cfg_fn(model, 1)(guidance.bundle(params, labels, w), x, t)
    assert_close(got, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-5,
                 err_msg=f"w={w}")


def test_label_dropout_rate():
  labels = jnp.zeros((20000,), jnp.int32)
  dropped = guidance.drop_labels(jax.random.PRNGKey(0), labels, 10, 0.2)
  frac = float(jnp.mean(dropped == 10))
  assert abs(frac - 0.2) < 0.01
  assert set(np.unique(dropped)) == {0, 10}
  np.testing.assert_array_equal(
      guidance.drop_labels(jax.random.PRNGKey(0), labels, 10, 0.0), labels)


@pytest.mark.slow
def test_guided_samples_and_requested_classes(trained):
  config, model, state = trained
  config.sampling.guidance = 2.0
  config.sampling.label = 3
  x = generate.generate(config, model, state.ema_params, 4, 4, seed=0)
  assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x))
  np.testing.assert_array_equal(from_config.sample_labels(config, 0, 3),
                                [3, 3, 3])
  config.sampling.label = -1
  np.testing.assert_array_equal(from_config.sample_labels(config, 8, 4),
                                [8, 9, 0, 1])


@pytest.mark.parametrize("change,match", [
    (dict(guidance=1.0, num_classes=0), "sampling.guidance"),
    (dict(label=10), "sampling.label"),
    (dict(label_dropout=1.0), "training.label_dropout"),
])
def test_config_errors(change, match):
  config = conditional_config()
  config.model.num_classes = change.get("num_classes", 10)
  config.sampling.guidance = change.get("guidance", 0.0)
  config.sampling.label = change.get("label", -1)
  config.training.label_dropout = change.get("label_dropout", 0.1)
  with pytest.raises(from_config.ConfigError, match=match):
    validation.validate_config(config)


def test_data_errors():
  config = conditional_config()
  config.model.num_classes = 5
  with pytest.raises(data.DataError, match="10 classes"):
    next(data.create_input_iter(config))
  config.model.num_classes = 10
  config.data.name = "folder"
  with pytest.raises(data.DataError, match="no labels"):
    next(data.create_input_iter(config))


@pytest.mark.slow
def test_conditional_train_sample_and_export_cli(tmp_path):
  import os
  from tests.processes import run_entries_in_one_process
  from tests.test_train_cli import TINY, error_line, run
  wd = str(tmp_path / "cond")
  # Trained and sampled in one process (tests/processes.py); the exporter's
  # refusal is a process of its own (`python -m`, as users run it).
  [[p], [sampled, bad_class]] = run_entries_in_one_process([
      ("train.py", [[*TINY, "--workdir", wd, "--config.training.num_steps=2",
                     "--config.model.num_classes=10",
                     "--config.sampling.guidance=1.0"]]),
      ("sample.py", [["--workdir", wd, "--num", "4", "--batch_size", "4",
                      "--class", "7", "--guidance", "2"],
                     ["--workdir", wd, "--class", "12"]])])
  export = run("-m", "ddpm_jax.interop.export", "--workdir", wd, "--out",
               str(tmp_path / "exported"))
  assert p.returncode == 0, p.stderr[-3000:]
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  x = np.load(os.path.join(wd, "samples", "sample_seed0_step2_class7_w2.npz"))
  assert x["images"].shape == (4, 8, 8, 1)
  line = error_line(bad_class)
  assert "--class=12 is invalid" in line and "[0, 10)" in line, line
  line = error_line(export)
  assert "class-conditional" in line
  assert not os.path.exists(tmp_path / "exported")
