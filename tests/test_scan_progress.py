"""Progress from inside the sampler's lax.scan (ddpm_jax/samplers/
scan_progress.py): a chain of S steps ticks every K-th step and at its
last, the samples are the same bits with and without the ticks, and the
ticks are on only where a person watches (bars shown, a terminal)."""

import fcntl
import io
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import progress, schedules
from ddpm_jax.samplers import registry, scan_progress
from tests.reference_models import toy_apply_jax, toy_weights

ROOT = pathlib.Path(__file__).resolve().parent.parent
BETAS = schedules.get_betas("linear", 20, beta_end=0.2)
PARAMS = {k: jnp.asarray(v) for k, v in toy_weights(1).items()}
SHAPE = (3, 4, 4, 1)


def draw(sampler, progress_every, **options):
  """(samples, trajectory, the ticks heard) of a 20-step chain."""
  heard = []
  with scan_progress.listening(heard.append):
    x, traj = registry.get_sampler(sampler)(
        PARAMS, toy_apply_jax, BETAS, jax.random.PRNGKey(4), SHAPE,
        progress_every=progress_every, **options)
    x = np.asarray(x)
    traj = jax.tree_util.tree_map(np.asarray, traj)
  jax.effects_barrier()
  return x, traj, heard


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", {}), ("ddpm", {"steps": 10}),
    ("ddim", {"eta": 0.5, "return_every": 5})])
def test_a_chain_ticks_every_k_steps_and_draws_the_same_bits(sampler,
                                                             options):
  steps = options.get("steps", 20)
  plain, plain_traj, heard = draw(sampler, 0, **options)
  assert not heard
  for every in (1, 3, 5):
    x, traj, heard = draw(sampler, every, **options)
    want = list(range(every, steps + 1, every))
    if want[-1] != steps:
      want.append(steps)  # and the last step
    assert sorted(heard) == want, (every, heard)
    np.testing.assert_array_equal(x, plain)
    for k in plain_traj:
      np.testing.assert_array_equal(traj[k], plain_traj[k], err_msg=k)


class _Stderr(io.StringIO):

  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


@pytest.mark.parametrize("shown,tty,want", [
    (True, True, 40), (True, False, 0), (False, True, 0)])
def test_ticks_only_where_a_person_watches(monkeypatch, shown, tty, want):
  monkeypatch.setattr(progress, "_ENABLED", [shown])
  monkeypatch.setattr(sys, "stderr", _Stderr(tty))
  assert scan_progress.every(1000) == want
  if want:
    assert scan_progress.every(20) == 1  # at most one tick per step
    assert scan_progress.every(260) == 11  # at most TICKS per chain


def _read_all(fd):
  out = b""
  while True:
    try:
      chunk = os.read(fd, 65536)
    except OSError:  # EIO: the other end closed
      return out.decode(errors="replace")
    if not chunk:
      return out.decode(errors="replace")
    out += chunk


@pytest.mark.slow
def test_sample_py_moves_its_bar_step_by_step_on_a_terminal(tmp_path):
  # sample.py with its stderr on a terminal (a pty), the batch split over 2
  # devices: its bar counts the 20 steps of the one batch from inside the
  # chain. Through a pipe the bar counts batches, and the images are the
  # same bits.
  from tests.processes import xla_flags
  from tests.test_hub import _model_files
  model = tmp_path / "model"
  model.mkdir()
  for name, data in _model_files(tmp_path, 0).items():
    (model / name).write_bytes(data)
  args = [sys.executable, "sample.py", "--model", str(model), "--num", "2",
          "--batch_size", "2"]
  env = dict(os.environ, XLA_FLAGS=xla_flags(2), TF_CPP_MIN_LOG_LEVEL="2")
  main, other = pty.openpty()
  # 120 columns (a new pty has 0, where tqdm draws an empty bar).
  fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
  p = subprocess.Popen(args + ["--out", str(tmp_path / "tty")], cwd=ROOT,
                       env=env, stdout=subprocess.PIPE, stderr=other)
  os.close(other)
  seen = _read_all(main)
  p.wait(timeout=300)
  os.close(main)
  assert p.returncode == 0, seen[-3000:]
  assert re.search(r"sampling 2 \(20 steps\): 100%.*\b20/20 .*step/s", seen
                   ), seen[-3000:]
  ticks = re.findall(r"sampling 2 \(20 steps\):.*?\b(\d+)/20\b", seen)
  assert len(set(ticks)) > 2, ticks  # moved on the way, not only at the end
  piped = subprocess.run(args + ["--out", str(tmp_path / "pipe")], cwd=ROOT,
                         env=env, capture_output=True, text=True,
                         timeout=300)
  assert piped.returncode == 0, piped.stderr[-3000:]
  assert "1/1 " in piped.stderr and "/20" not in piped.stderr, piped.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "tty.npz")["images"],
                                np.load(tmp_path / "pipe.npz")["images"])
