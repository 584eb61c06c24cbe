"""benchmarks/quality_parity.py: its PyTorch reference loop is ddpm-jax's
recipe (the same updates from the same start, noise and batches), and the
script trains, scores and compares both sides at a tiny setting."""

import json
import os

import jax
import numpy as np
import pytest

from tests.processes import run_in_one_process
from tests.tiny_configs import tiny_digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The model, batch, warmup and grid of tests/tiny_configs.py's TINY_ARGS
# (the same train step and samplers as the other tests').
TINY = ["--config.training.num_steps=3", "--config.model.ch_mult=(1,)",
        "--config.model.num_res_blocks=1",
        "--config.model.attn_resolutions=(8,)",
        "--config.model.num_groups=8",
        "--config.diffusion.num_timesteps=20",
        "--config.training.batch_size=8", "--config.optim.warmup_steps=2",
        "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
        "--seeds", "0", "--sample_seeds", "0,1", "--num", "8",
        "--sampler_steps", "5", "--bpd_num", "4"]


def _jax_draws(config):
  """ddpm-jax's train-step draws of t and the noise (train/step.py), as
  the reference loop's ``draws``."""
  import torch

  def draws(step, x0):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    key_loss, _ = jax.random.split(key)
    key_t, key_n = jax.random.split(key_loss)
    t = jax.random.randint(key_t, (x0.shape[0],), 0,
                           config.diffusion.num_timesteps)
    shape = (x0.shape[0], x0.shape[2], x0.shape[3], x0.shape[1])
    noise = np.asarray(jax.random.normal(key_n, shape))
    return (torch.from_numpy(np.asarray(t).astype(np.int64)),
            torch.from_numpy(noise.transpose(0, 3, 1, 2).copy()))

  return draws


@pytest.mark.slow
def test_the_reference_loop_makes_ddpm_jax_updates(tmp_path, torch):
  # From ddpm-jax's initial weights with its t and noise, dropout off: the
  # PyTorch loop's weights after 4 updates (the first at learning rate 0,
  # then warmup, clipping, Adam) equal train.py's, and so does the EMA
  # (decay 0.5, so that it weighs each update).
  from benchmarks import torch_reference
  from ddpm_jax.interop import diffusers_unet, sources
  from ddpm_jax.run import train_loop
  config = tiny_digits_config(num_timesteps=20, batch_size=8, num_steps=4,
                              ema_decay=0.5, log_every=4,
                              checkpoint_every=4)
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = (8,)
  config.model.dropout = 0.0
  config.optim.warmup_steps = 2
  config.optim.grad_clip = 0.05  # below the gradient norm: clipping acts
  train_loop.train_and_evaluate(config, str(tmp_path / "jax"))
  _, jax_ema, _ = sources.load_workdir(str(tmp_path / "jax"))
  _, raw, _ = sources.load_workdir(str(tmp_path / "jax"), use_ema=False)
  torch_reference.train(config, str(tmp_path / "torch"), init="jax",
                        draws=_jax_draws(config))
  torch_ema = diffusers_unet.read_model_dir(str(tmp_path / "torch"))[3]
  start = torch_reference.jax_initial_params(config)
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                                 jax_ema, start)
  # Most weights moved by about an update's size (lr 1e-3, EMA 0.5). Not
  # those whose gradient is 0: attention's key bias (softmax ignores it)
  # and, with 32 channels in 32 groups, what a block adds per channel
  # before its second GroupNorm (conv1's bias, the time embedding) ...
  moved = jax.tree_util.tree_leaves(moved)
  assert sum(m > 1e-4 for m in moved) > 0.7 * len(moved)
  # ... and the two sides agree far below that: float32 convolutions in
  # another order change the gradients in their last bits, and Adam's
  # first steps are about lr * sign(g).
  for path, a, b in zip(
      jax.tree_util.tree_leaves_with_path(jax_ema),
      jax.tree_util.tree_leaves(jax_ema), jax.tree_util.tree_leaves(
          torch_ema)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path[0]))
  assert not np.allclose(jax.tree_util.tree_leaves(raw)[0],
                         jax.tree_util.tree_leaves(jax_ema)[0])


@pytest.mark.slow
def test_the_script_trains_scores_and_compares_both_sides(tmp_path):
  # Run, run again, and run with other settings into the same workdir, in
  # one process (tests/processes.py).
  args = ["--workdir", str(tmp_path / "q"), *TINY]
  p, again, other = run_in_one_process(
      "benchmarks/quality_parity.py",
      [args, args, args + ["--torch_init", "jax"]])
  assert p.returncode == 0, p.stderr[-3000:]
  # stdout: the training loop's lines, then the results.
  lines = [l for l in p.stdout.strip().splitlines()
           if l.startswith(("{", "ratio"))]
  models = [json.loads(l) for l in lines[:2]]
  assert [(m["side"], m["seed"]) for m in models] == [("jax", 0),
                                                      ("torch", 0)]
  for m in models:
    assert len(m["digits_fid"]) == 2 and m["bpd"] > 0, m
  sides = [json.loads(l) for l in lines[2:4]]
  assert [s["side"] for s in sides] == ["jax", "torch"]
  assert sides[0]["digits_fid"]["mean"] == models[0]["digits_fid_mean"]
  assert json.loads(lines[4])["settings"] == {"jax_init": "jax",
                                              "torch_init": "torch"}
  assert lines[5].startswith("ratio jax/torch: digits FID ")
  assert sorted(os.listdir(tmp_path / "q" / "torch_seed0")) == [
      "config.json", "diffusion_pytorch_model.safetensors",
      "scheduler_config.json", "scores.json"]
  # Again: nothing is trained or scored anew, the same figures come out.
  assert again.returncode == 0, again.stderr[-3000:]
  assert "training " not in again.stderr and "sampling" not in again.stderr
  assert again.stdout.strip().splitlines()[:4] == lines[:4]
  # Other settings into the same workdir: refused in one line.
  assert other.returncode == 1
  assert other.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path / 'q'} holds models of other settings")
