"""The sharded train step: 8 simulated devices (data-parallel, and FSDP)
against 1 device, and checkpoints moved between device counts, in one
subprocess because the device count is fixed when JAX starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_jax import parallel
from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
# The scripts import the tests' package; what PYTHONPATH held stays after.
PYTHONPATH = os.pathsep.join(filter(None, [ROOT,
                                           os.environ.get("PYTHONPATH")]))


# One 8-device process for every 8-device part of this file (one start,
# instead of one per part): tests/scripts/sharded_steps.py and
# sharded_sampling.py each print their JSON line, then train.py's commands
# of argv[2] (a JSON list of argvs) run in the same process
# (tests/scripts/run_commands.py), their results as the last line.
_EIGHT_DEVICES = ("import json, sys; sys.path.insert(0, 'tests/scripts'); "
                  "steps, argvs = sys.argv[1], json.loads(sys.argv[2]); "
                  "sys.argv = ['sharded_steps.py', steps]; "
                  "import sharded_steps, sharded_sampling, run_commands; "
                  "sharded_steps.main(); sharded_sampling.main(); "
                  "print(json.dumps(run_commands.run_commands('train.py', "
                  "argvs)))")


def moved_config(num_steps):
  """TINY_ARGS (tests/tiny_configs.py) as a config, for the training run of
  test_checkpoints_move_between_device_counts in this process."""
  from tests.tiny_configs import tiny_config
  return tiny_config(num_steps=num_steps, log_every=1, checkpoint_every=2,
                     sample_every=0)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """{"steps": tests/scripts/sharded_steps.py's result, "sampling":
  tests/scripts/sharded_sampling.py's, "moved": (workdir, train.py's
  results)}, on 8 simulated devices. The workdir is written here, on 1
  device (2 steps), then resumed by train.py on 8 devices replicated (to
  step 4) and on 8 with FSDP (to step 6)."""
  from ddpm_jax.run import train_loop
  from tests.tiny_configs import TINY_ARGS
  wd = str(tmp_path_factory.mktemp("moved") / "run")
  train_loop.train_and_evaluate(moved_config(2), wd)
  common = [*TINY_ARGS, "--workdir", wd, "--config.training.sample_every=0"]
  argvs = [common + ["--config.training.num_steps=4"],
           common + ["--config.training.num_steps=6",
                     "--config.parallel.fsdp=True"]]
  env = dict(os.environ, XLA_FLAGS=processes.xla_flags(8),
             PYTHONPATH=PYTHONPATH, TF_CPP_MIN_LOG_LEVEL="2")
  p = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(STEPS),
                      json.dumps(argvs)],
                     cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=1200)
  assert p.returncode == 0, p.stderr[-3000:]
  # The three JSON lines, told apart by what they hold (not by position).
  printed = [json.loads(line) for line in p.stdout.splitlines()
             if line.startswith(("{", "["))]
  (steps,) = [x for x in printed if isinstance(x, dict) and "adam_dp8" in x]
  (sampling,) = [x for x in printed if isinstance(x, dict) and "devices" in x]
  (moved,) = [x for x in printed if isinstance(x, list)]
  return {"steps": steps, "sampling": sampling, "moved": (wd, moved)}


@pytest.fixture(scope="module")
def sharded_result(eight_devices):
  return eight_devices["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["sgd_dp8", "sgd_fsdp8", "sgd_dp8_micro"])
def test_sharded_params_equal_one_device(sharded_result, run):
  r = sharded_result[run]
  assert r["step"] == STEPS
  if run.endswith("fsdp8"):
    assert r["split_arrays"] > 0  # some arrays really are split
  else:
    assert r["split_arrays"] == 0
    # Data-parallel: the gradients are summed as one flat buffer (plus the
    # loss), not array by array; and with dropout on, so that the masks
    # drawn inside the shard_map must be the 1-device step's.
    assert r["reduced_arrays"] <= 2 < r["num_params"], r["reduced_arrays"]
    assert r["dropout"] > 0
  for what in ("params", "ema"):
    for i, (diff, scale) in enumerate(r[what]):
      # 1e-5 relative to each array's scale. Gradients that are analytically
      # zero (a bias right before a GroupNorm) come out as rounding noise of
      # ~1e-19 whose value depends on the summation order; the 1e-12
      # absolute term covers exactly those arrays.
      assert diff <= 1e-5 * scale + 1e-12, (what, i, diff, scale)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["adam_dp8"])
def test_sharded_adam_losses_equal_one_device(sharded_result, run):
  # Adam divides by sqrt(v): it turns those rounding-noise gradients into
  # updates of +-lr whose sign depends on the summation order, on 1 device
  # as on 8. Its parameters are therefore compared through the losses they
  # produce, step by step; SGD above compares every parameter.
  r = sharded_result[run]
  np.testing.assert_allclose(r["losses"], r["ref_losses"], rtol=1e-5)


@pytest.mark.slow
def test_sampling_on_8_devices_equals_one_device(eight_devices):
  """generate.generate with the batch split over 8 simulated devices, on 1
  device, and in batches of 3: the same samples, bit for bit (each sample's
  noise comes from its own key; the U-Net's ops are per example)."""
  r = eight_devices["sampling"]
  assert r["devices"] == 8
  for name in ("ddpm", "ddpm_respaced", "ddim"):
    assert r[name]["shards"] == 8, name  # really split over 8 devices
    assert r[name]["shape"] == [12, 8, 8, 1] and r[name]["finite"], name
    assert r[name]["max_diff"] == 0.0, (name, r[name])
    assert r[name]["max_diff_batching"] == 0.0, (name, r[name])


def test_fsdp_spec_picks_the_largest_divisible_axis():
  assert parallel.fsdp_spec((3, 3, 64, 128), 8) == parallel.P(
      None, None, None, "data")
  assert parallel.fsdp_spec((3, 3, 128, 60), 8) == parallel.P(
      None, None, "data", None)
  assert parallel.fsdp_spec((64,), 8) == parallel.P()  # small: replicated
  assert parallel.fsdp_spec((3, 3, 7, 9999), 8) == parallel.P()
  assert parallel.fsdp_spec((3, 3, 64, 128), 1) == parallel.P()


@pytest.mark.slow
def test_checkpoints_move_between_device_counts(eight_devices, capsys):
  # Written by 1 device, resumed on 8 replicated, then on 8 with FSDP
  # (train.py, in the 8-device process of the fixture), then on 1 again
  # (here): the checkpoint restores onto whatever mesh runs, split or not.
  # TINY's one-level U-Net: restoring is what is tested.
  from ddpm_jax.run import train_loop
  wd, (replicated, fsdp) = eight_devices["moved"]
  assert replicated["rc"] == 0, replicated["stderr"][-3000:]
  assert "at step 2" in replicated["stdout"], replicated["stdout"][-2000:]
  assert fsdp["rc"] == 0, fsdp["stderr"][-3000:]
  assert "at step 4" in fsdp["stdout"], fsdp["stdout"][-2000:]
  capsys.readouterr()
  train_loop.train_and_evaluate(moved_config(8), wd)
  assert "at step 6" in capsys.readouterr().out
  assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints"))
                ) == [4, 6, 8]


def test_cpu_device_count_is_a_power_of_two_per_core():
  assert [parallel.cpu_device_count(c) for c in (1, 2, 3, 4, 6, 8, 12, 64)
          ] == [1, 2, 2, 4, 4, 8, 8, parallel.MAX_CPU_DEVICES]


_COUNT = ("from ddpm_jax import parallel; import jax; "
          "print(parallel.use_cpu_cores(), jax.device_count())")


@pytest.mark.parametrize("env, expected", [
    ({}, "auto"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, "None 3"),
    ({"JAX_NUM_CPU_DEVICES": "5"}, "None 5"),
])
def test_use_cpu_cores_unless_the_count_is_chosen(env, expected):
  # What the entry points call before JAX starts (ddpm_jax/cli.py).
  base = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  p = subprocess.run([sys.executable, "-c", _COUNT], cwd=ROOT,
                     env=dict(base, JAX_PLATFORMS="cpu", **env),
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  if expected == "auto":
    n = parallel.cpu_device_count(parallel.usable_cores())
    expected = f"{n} {n}"
  assert p.stdout.split()[-2:] == expected.split()


@pytest.mark.slow
def test_batch_not_divisible_by_the_devices_is_a_one_line_error(tmp_path):
  from tests.test_train_cli import TINY, error_line, run
  wd = tmp_path / "run"
  p = run("train.py", *TINY, "--workdir", str(wd),
          "--config.training.batch_size=3",
          env={"XLA_FLAGS": processes.xla_flags(2)})
  line = error_line(p)
  assert "training.batch_size=3" in line and "2 devices" in line, line
  assert "JAX_NUM_CPU_DEVICES=1" in line, line
  assert not (wd / "checkpoints").exists()
