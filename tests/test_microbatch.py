"""Microbatched train steps (training.microbatch_size): each device takes
its examples a few at a time in one lax.scan and sums the gradients. The
result must be the one-pass step's, dropout masks included, up to the
order of the float32 sums; and the auto rule and its errors."""

import jax
import numpy as np
import optax
import pytest

from ddpm_jax import from_config, parallel, train, validation
from tests.tiny_configs import tiny_digits_config

STEPS = 3


def tiny(microbatch_size, **model):
  config = tiny_digits_config(num_timesteps=50, batch_size=8, ema_decay=0.9)
  config.optim.warmup_steps = 2
  config.training.microbatch_size = microbatch_size
  for key, value in model.items():
    config.model[key] = value
  return config


def run(config, batches):
  """STEPS steps of the config's clipping and warmup with SGD+momentum on
  one device (Adam would turn rounding-noise gradients into +-lr steps;
  see tests/test_parallel.py); (state, losses, compiled HLO text)."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = from_config.make_model(config)
  tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip),
                   optax.sgd(from_config.learning_rate_fn(config), momentum=0.9))
  state = train.create_train_state(config, model, tx, mesh)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step = train.make_train_step(config, model, tx, mesh, shardings)
  schedule = from_config.make_schedule(config)
  compiled = step.lower(state, batches[0], schedule).compile()
  losses = []
  for b in batches:
    state, metrics = compiled(state, b, schedule)
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses, compiled.as_text()


@pytest.fixture(scope="module")
def batches():
  rng = np.random.default_rng(0)
  return [rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
          for _ in range(STEPS)]


@pytest.fixture(scope="module")
def one_pass(batches):
  return run(tiny(0), batches)


@pytest.mark.slow
@pytest.mark.parametrize("microbatch", [2, 1])
def test_microbatched_step_equals_one_pass(batches, one_pass, microbatch):
  ref, ref_losses, ref_hlo = one_pass
  config = tiny(microbatch)
  assert config.model.dropout > 0  # the masks must be the batch's, sliced
  state, losses, hlo = run(config, batches)
  # The passes really run as a loop (threefry's own loops aside).
  passes = '"known_trip_count":{"n":"%d"}' % (8 // microbatch)
  assert passes in hlo and passes not in ref_hlo
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for what in ("params", "ema_params"):
    for a, b in zip(jax.tree_util.tree_leaves(getattr(state, what)),
                    jax.tree_util.tree_leaves(getattr(ref, what))):
      diff = float(np.max(np.abs(np.asarray(a, np.float64) - b)))
      scale = float(np.max(np.abs(np.asarray(b, np.float64))))
      # As tests/test_parallel.py: 1e-5 of each array's scale, plus 1e-12
      # for gradients that are analytically zero (rounding noise).
      assert diff <= 1e-5 * scale + 1e-12, (what, diff, scale)


def test_auto_microbatch_rule():
  cpu = parallel.make_mesh(jax.devices()[:1])
  # 32x32x3 at ch 32: 128 KiB per image at full resolution -> passes of 2.
  config = tiny(-1)
  config.data.image_size, config.data.channels = 32, 3
  config.training.batch_size = 64
  assert train.microbatch_size(config, cpu, flat=False) == 2
  # The digits model's 8 KiB images: the batch of 8 fits in one pass.
  assert train.microbatch_size(tiny(-1), cpu, flat=False) == 0
  # A 6-image batch with a target of 4: the largest divisor under it.
  config.data.image_size, config.training.batch_size = 22, 6
  assert train.microbatch_size(config, cpu, flat=False) == 3
  # Explicit sizes as given; 0 and the whole slice mean one pass.
  assert train.microbatch_size(tiny(4), cpu, flat=False) == 4
  assert train.microbatch_size(tiny(8), cpu, flat=False) == 0
  # Passes on CPU devices differentiate 'auto' convolutions by 'matmul'
  # (XLA's own gradients inside the scan are slow there); an explicit
  # choice stands.
  model = from_config.make_model(tiny(-1))
  assert train.step_conv_backward(model, 2, cpu) == "matmul"
  assert train.step_conv_backward(model, 0, cpu) == "auto"
  assert train.step_conv_backward(model.clone(conv_backward="xla"), 2,
                                  cpu) == "xla"
  # What the benchmark reports: the one-pass step runs XLA's gradient in
  # plain convolutions and 'matmul' in the sub-pixel upsampling.
  assert train.step_backward_plan(model, 0, cpu) == {
      "conv": "xla", "subpixel": "matmul"}
  assert train.step_backward_plan(model, 2, cpu) == {
      "conv": "matmul", "subpixel": "matmul"}
  assert train.step_backward_plan(model.clone(conv_backward="xla"), 2,
                                  cpu) == {"conv": "xla", "subpixel": "xla"}


@pytest.mark.parametrize("size, words", [
    (3, "divisor of 8"),
    (-2, "-1 (auto), 0"),
])
def test_bad_microbatch_size_is_a_one_line_error(size, words):
  config = tiny(size)
  cpu = parallel.make_mesh(jax.devices()[:1])
  with pytest.raises(from_config.ConfigError) as err:
    validation.validate_config(config)
    train.microbatch_size(config, cpu, flat=False)
  message = str(err.value)
  assert "training.microbatch_size" in message and words in message
  assert "\n" not in message
