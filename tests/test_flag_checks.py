"""Each entry point checks its own flags before it imports JAX or reads a
checkpoint (ddpm_jax/run/flag_checks.py): a bad count, path or config
override is refused in one line, at once, and --help answers at once.

Each case runs in a process of its own twice: once as a user runs it,
timed (the bound is 2 s for a refusal and 1 s for --help, against about
0.2 s measured on 2 cores), and once with JAX made unimportable, which
shows that the answer came before JAX whatever the machine's load."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from tests.processes import error_line

ROOT = pathlib.Path(__file__).resolve().parent.parent
NO_JAX = """
import runpy, sys
class NoJax:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax", "orbax"):
      raise ImportError("JAX imported before the flags were checked")
sys.meta_path.insert(0, NoJax())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _cases(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  folder = tmp_path / "folder"
  folder.mkdir()
  missing = tmp_path / "missing"
  train = ["train.py", "--config", "configs/digits.py"]
  return [
      (["sample.py", "--workdir", str(folder), "--num", "0"],
       "error: --num must be positive, got 0"),
      (["sample.py", "--workdir", str(folder), "--batch_size", "-1"],
       "error: --batch_size must be positive, got -1"),
      (["sample.py", "--workdir", str(a_file)],
       f"error: --workdir {a_file} is a file, not a folder: give the "
       f"workdir of a train.py run"),
      (["sample.py", "--workdir", str(missing)],
       f"error: --workdir {missing} does not exist: give the workdir of a "
       f"train.py run"),
      (["sample.py", "--workdir", str(folder), "--out", f"{a_file}/x"],
       f"error: {a_file} is a file, not a folder: give --out a path under "
       f"a folder"),
      (["sample.py", "--workdir", str(folder), "--interpolate", "1,x"],
       "error: image indices must be integers, got 1,x"),
      (["sample.py", "--workdir", str(folder), "--interpolate", "0,1,2"],
       "error: --interpolate takes two image indices I,J, got [0, 1, 2]"),
      (["sample.py", "--workdir", str(folder), "--interpolate", "0,1",
        "--lambdas", "1"],
       "error: --lambdas must be >= 2, got 1"),
      (["sample.py", "--workdir", str(folder), "--partial=0,-1"],
       "error: give image indices >= 0, e.g. --partial=0,1,2"),
      (["evaluate.py", "--workdir", str(a_file)],
       f"error: --workdir {a_file} is a file, not a folder: give the "
       f"workdir of a train.py run"),
      (["evaluate.py", "--workdir", str(folder), "--batch_size", "0"],
       "error: --batch_size must be positive, got 0"),
      (["evaluate.py", "--workdir", str(folder), "--num", "-2"],
       "error: --num must be >= 0 (0: the metric's default), got -2"),
      ([*train, "--workdir", str(a_file)],
       f"error: {a_file} is a file, not a folder: give --workdir a path "
       f"under a folder"),
      ([*train, "--workdir", str(folder), "--config.training.num_step=3"],
       "error: unknown config field training.num_step (did you mean "
       "num_steps?)"),
      ([*train, "--workdir", str(folder), "--config.trainin.num_steps=3"],
       "error: unknown config field trainin (did you mean training?)"),
      ([*train, "--workdir", str(folder),
        "--config.training.num_steps.x=3"],
       "error: unknown config field training.num_steps.x: "
       "training.num_steps is a value, not a section"),
  ]


def _run(args, no_jax):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = ([sys.executable, "-c", NO_JAX, *args] if no_jax
         else [sys.executable, *args])
  began = time.perf_counter()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=120)
  return p, time.perf_counter() - began


def test_bad_flags_are_refused_at_once_before_jax(tmp_path):
  for args, want in _cases(tmp_path):
    for no_jax in (True, False):
      p, seconds = _run(args, no_jax)
      assert p.returncode == 1, (args, p.stderr[-2000:])
      assert error_line(p) == want, (args, p.stderr[-2000:])
      if not no_jax:
        assert seconds < 2, (args, seconds)


@pytest.mark.parametrize("script", ["train.py", "sample.py", "evaluate.py"])
def test_help_answers_at_once_before_jax(script):
  for no_jax in (True, False):
    p, seconds = _run([script, "--help"], no_jax)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--workdir" in p.stdout
    if not no_jax:
      assert seconds < 1, seconds
