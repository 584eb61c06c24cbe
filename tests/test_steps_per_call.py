"""training.steps_per_call: several train steps per jitted call (a
lax.fori_loop), with logs, checkpoints and evaluations still at their own
steps, and a stopped run resumed bit for bit."""

import os

import jax
import numpy as np
import pytest

from ddpm_jax.interop import sources
from ddpm_jax.run import train_loop
from tests.tiny_configs import tiny_config


def config(num_steps, steps_per_call):
  c = tiny_config(num_steps=num_steps, log_every=4, checkpoint_every=6,
                  sample_every=0, steps_per_call=steps_per_call)
  c.training.max_to_keep = 10
  return c


def params(workdir):
  return sources.load_workdir(workdir, use_ema=False)[1]


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
def test_three_steps_per_call(tmp_path, capsys):
  # 9 steps, 3 per call at most, each call stopping at the next log
  # (every 4), checkpoint (every 6) or the end: calls of 3, 1, 2, 2, 1.
  one = str(tmp_path / "one")
  train_loop.train_and_evaluate(config(9, 3), one)
  out = capsys.readouterr().out
  assert [l.split(":")[0] for l in out.splitlines()
          if "loss" in l] == ["step 4", "step 8", "step 9"], out
  assert sorted(os.listdir(os.path.join(one, "checkpoints")),
                key=int) == ["6", "9"]
  # The same updates as one step per call (the same losses and gradient
  # norms in the logs), up to the order of float32 sums inside a loop body
  # compiled apart.
  ref = str(tmp_path / "ref")
  train_loop.train_and_evaluate(config(9, 1), ref)
  out_ref = capsys.readouterr().out
  assert [l.split(" steps/s")[0] for l in out.splitlines() if "loss" in l
          ] == [l.split(" steps/s")[0] for l in out_ref.splitlines()
                if "loss" in l]
  # Adam's first updates are about lr * sign(g) (lr 1e-3 here), so a
  # gradient component near 0 whose sign the summation order flips moves
  # its weight by a fraction of lr: the weights agree to 2e-4 (measured:
  # 8e-5 at most, in biases), where a skipped or repeated step or another
  # batch would move them by about 1e-3.
  for a, b in zip(leaves(params(one)), leaves(params(ref))):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
  # Stopped at step 5 (a call cut short by the end) and resumed to 9:
  # the same bits as the run that went straight through.
  two = str(tmp_path / "two")
  train_loop.train_and_evaluate(config(5, 3), two)
  train_loop.train_and_evaluate(config(9, 3), two)
  for a, b in zip(leaves(params(two)), leaves(params(one))):
    np.testing.assert_array_equal(a, b)
  # Stopped at step 6, after a call of two steps (5 and 6) in mid-epoch:
  # the input position saved is the one after step 6's batch, not after
  # the call's first, so the resumed run reads on where it stopped.
  three = str(tmp_path / "three")
  train_loop.train_and_evaluate(config(6, 3), three)
  train_loop.train_and_evaluate(config(9, 3), three)
  for a, b in zip(leaves(params(three)), leaves(params(one))):
    np.testing.assert_array_equal(a, b)
