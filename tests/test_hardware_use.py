"""The training log's hardware figures (ddpm_jax/run/hardware_use.py):
model TFLOP/s per device from the compiled step, MFU against a peak, the
time spent waiting for input, the step's compile time."""

import glob

import jax
import pytest

from ddpm_jax import from_config, hlo_costs, parallel
from ddpm_jax.run import hardware_use, train_loop
from ddpm_jax.train.state import create_train_state
from ddpm_jax.train.step import make_train_step
from tests.test_train_cli import read_scalars
from tests.tiny_configs import tiny_config


def test_the_peak_comes_from_the_config_or_the_device_kind():
  assert hardware_use.peak_tflops("TPU v4") == 275.0
  assert hardware_use.peak_tflops("TPU v5 lite") == 197.0
  assert hardware_use.peak_tflops("TPU v5p") == 459.0
  assert hardware_use.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert hardware_use.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert hardware_use.peak_tflops("NVIDIA L40S") == 362.0
  assert hardware_use.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  # A longer name is not its prefix's chip: a name the table lacks gets no
  # peak (MFU omitted) rather than another chip's.
  assert hardware_use.peak_tflops("NVIDIA L40") == 181.0
  assert hardware_use.peak_tflops("NVIDIA L4") == 121.0
  assert hardware_use.peak_tflops("TPU v5e") is None
  assert hardware_use.peak_tflops("TPU v7x") is None
  assert hardware_use.peak_tflops("cpu") is None
  assert hardware_use.peak_tflops("cpu", given=2.5) == 2.5
  assert hardware_use.peak_tflops("TPU v4", given=100.0) == 100.0


def test_rates():
  r = hardware_use.rates(2e12, steps=3, seconds=2.0, input_seconds=0.5,
                         peak=None)
  assert r == {"tflops_per_device": 3.0, "input_wait": 0.25}
  r = hardware_use.rates(2e12, steps=3, seconds=2.0, input_seconds=0.5,
                         peak=6.0)
  assert r["mfu"] == pytest.approx(0.5)


@pytest.mark.slow  # two training runs of the U-Net, end to end
def test_the_logged_tflops_are_the_compiled_steps_and_a_profile_changes_nothing(
    tmp_path):
  # Two runs: without a peak (none is known for the CPU: no MFU) and
  # without a profile; with a peak and a profile of steps 2 to 3. The FLOPs
  # behind the logged TFLOP/s (TFLOP/s over steps/s) are those
  # ddpm_jax/hlo_costs.py counts in the same step, compiled as training
  # compiles it; the profile is written and the results are the same bits.
  model = mesh = flops = None
  states = {}
  for peak, profile in ((0.0, ""), (4.0, "2:3")):
    config = tiny_config(num_steps=3, checkpoint_every=3, sample_every=0,
                         log_every=1, peak_tflops=peak,
                         profile_steps=profile)
    wd = str(tmp_path / f"run{peak}")
    states[peak] = train_loop.train_and_evaluate(config, wd)
    scalars = read_scalars(f"{wd}/tensorboard")
    assert set(scalars["train/compile_s"]) == {0}
    assert scalars["train/compile_s"][0] > 0
    assert set(scalars["train/input_wait"]) == {1, 2, 3}
    assert all(0 <= v <= 1 for v in scalars["train/input_wait"].values())
    if flops is None:
      model, tx = from_config.make_model(config), (
          from_config.make_optimizer(config))
      mesh = parallel.make_mesh()
      state = create_train_state(config, model, tx, mesh)
      step = make_train_step(config, model, tx, mesh, jax.tree_util.tree_map(
          lambda x: x.sharding, state))
      batch = jax.numpy.zeros((8, 8, 8, 1))
      flops = hlo_costs.program_flops(step.lower(
          state, batch, from_config.make_schedule(config)).compile().as_text())
      assert flops > 1e8
    for s in (1, 2, 3):
      tflops = scalars["train/tflops_per_device"][s]
      logged = tflops * 1e12 / scalars["train/steps_per_s"][s]
      assert logged == pytest.approx(flops, rel=0.01), (s, logged, flops)
      if peak:
        assert scalars["train/mfu"][s] == pytest.approx(tflops / peak,
                                                        rel=1e-5)
    if not peak:
      assert "train/mfu" not in scalars
    traces = glob.glob(f"{wd}/profile/plugins/profile/*/*.xplane.pb")
    assert len(traces) == (1 if profile else 0), traces
  same = jax.tree_util.tree_map(lambda a, b: bool((a == b).all()),
                                states[0.0], states[4.0])
  assert all(jax.tree_util.tree_leaves(same))


def test_a_profile_window_is_start_colon_end():
  from ddpm_jax.from_config import ConfigError
  from ddpm_jax.validation import profile_steps, validate_config
  assert profile_steps("") is None
  assert profile_steps("5:5") == (5, 5)
  assert profile_steps(" 2 : 9 ") == (2, 9)
  for bad in ("3:2", "0:4", "5", "a:b", "1:2:3"):
    config = tiny_config(profile_steps=bad)
    with pytest.raises(ConfigError, match="training.profile_steps"):
      validate_config(config)
