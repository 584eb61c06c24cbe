"""Faults during training: non-finite steps, damaged checkpoints."""

import os

import jax
import numpy as np
import pytest

from ddpm_jax import checkpoints, data, from_config, train
from ddpm_jax.run import train_loop
from tests import tiny_configs


# Every test here trains the U-Net end to end.
pytestmark = pytest.mark.slow


def tiny_config(num_steps):
  return tiny_configs.tiny_config(num_steps=num_steps, checkpoint_every=2,
                                  log_every=100)


def saved_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if s.isdigit())


def restore(config, workdir, step):
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  manager = checkpoints.checkpoint_manager(workdir, read_only=True)
  template = train.create_train_state(config, model, tx)
  import orbax.checkpoint as ocp
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template)))["state"]


def all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture
def nan_at_step_3(monkeypatch):
  real = data.create_input_iter

  def poisoned(config, position=data.Position()):
    for batch, after in real(config, position):
      batch = np.array(batch)
      if after.offset == 3 * config.training.batch_size:  # step 3's batch
        batch[0, 0, 0, 0] = np.nan
      yield batch, after

  monkeypatch.setattr(data, "create_input_iter", poisoned)


def test_nan_in_the_data_stops_without_a_bad_checkpoint(tmp_path,
                                                        nan_at_step_3):
  wd = str(tmp_path / "run")
  config = tiny_config(num_steps=6)
  with pytest.raises(FloatingPointError) as e:
    train_loop.train_and_evaluate(config, wd)
  msg = str(e.value)
  assert "not finite at step 3" in msg and "last checkpoint is step 2" in msg
  assert "\n" not in msg
  assert saved_steps(wd) == [2]
  assert all_finite(restore(config, wd, 2))


def test_nan_steps_can_be_skipped(tmp_path, nan_at_step_3):
  wd = str(tmp_path / "run")
  config = tiny_config(num_steps=4)
  config.training.skip_nonfinite = True
  state = train_loop.train_and_evaluate(config, wd)
  assert int(state.step) == 4 and all_finite(state)
  assert saved_steps(wd) == [2, 4]


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path,
                                                              capsys):
  wd = str(tmp_path / "run")
  train_loop.train_and_evaluate(tiny_config(num_steps=4), wd)
  assert saved_steps(wd) == [2, 4]
  # Truncate every file of checkpoint 4, as a crash mid-write would.
  for root, _, files in os.walk(os.path.join(wd, "checkpoints", "4")):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(root, f)) // 2)
  capsys.readouterr()
  state = train_loop.train_and_evaluate(tiny_config(num_steps=5), wd)
  out = capsys.readouterr()
  assert "checkpoint 4 is unreadable" in out.err, out.err
  assert "using checkpoint 2" in out.err
  assert "at step 2" in out.out
  assert int(state.step) == 5 and saved_steps(wd) == [2, 4, 5]
  # The damaged one is kept aside, not deleted.
  assert os.listdir(os.path.join(wd, "checkpoints_unreadable")) == ["4"]
