"""The benchmark scripts run as the README shows and print the ratio last
(smallest settings: this checks that they work, it times nothing)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The slow tests' benchmark commands, by script, in the order they run.
# They run in one process of 2 simulated devices (the train step's MFU is
# checked over both), one after another as each would in a process of its
# own (tests/scripts/run_commands.py): one Python start, PyTorch's import
# among it, instead of ten.
SMOKE = ["--config", "smoke"]
COMMANDS = {
    "benchmarks/train_step.py": {
        "both": [*SMOKE, "--batch", "8", "--steps", "1", "--repeats", "2",
                 "--peak_tflops", "2"],
        "per_call": [*SMOKE, "--batch", "8", "--steps", "4",
                     "--steps_per_call", "2", "--repeats", "1",
                     "--jax_only"]},
    "benchmarks/sampling.py": {
        "both": [*SMOKE, "--num", "2", "--timesteps", "2", "--repeats", "1"],
        "set": [*SMOKE, "--num", "2", "--timesteps", "2", "--repeats", "1",
                "--jax_only", "--set", "model.attention_impl=xla", "--set",
                "model.num_groups=8"],
        "ticks": [*SMOKE, "--num", "2", "--timesteps", "2", "--repeats",
                  "1", "--ticks"]},
    "benchmarks/compile_time.py": {"parts": [*SMOKE, "--batch", "4"]},
    "benchmarks/op_profile.py": {
        "train": [*SMOKE, "--what", "train", "--batch", "4", "--calls", "2",
                  "--out", "{out}/train"],
        "sample": [*SMOKE, "--what", "sample", "--num", "2", "--timesteps",
                   "3", "--calls", "1", "--out", "{out}/sample"],
        # After "sample": its folder is no longer empty.
        "not_empty": ["--out", "{out}/sample"]},
    "benchmarks/checkpoint_io.py": {"sides": [*SMOKE, "--repeats", "1"]},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """{(script, name): the command's result (argv, returncode, stdout,
  stderr)} for COMMANDS, with '{out}' a new folder."""
  out = str(tmp_path_factory.mktemp("op_profile"))
  groups = [(script, [[a.format(out=out) for a in argv]
                      for argv in named.values()])
            for script, named in COMMANDS.items()]
  results = processes.run_entries_in_one_process(
      groups, env=dict(os.environ, XLA_FLAGS=processes.xla_flags(2)))
  return {(script, name): r
          for (script, named), rs in zip(COMMANDS.items(), results)
          for name, r in zip(named, rs)}


def stdout_lines(ran, script, name):
  """The stdout lines of COMMANDS[script][name], which must have ended
  well."""
  r = ran[(f"benchmarks/{script}", name)]
  assert r.returncode == 0, (r.argv, r.stderr[-3000:])
  return r.stdout.strip().splitlines()


@pytest.mark.slow
def test_train_step_and_sampling_benchmarks_print_both_sides_and_ratio(ran):
  lines = stdout_lines(ran, "train_step.py", "both")
  jax_side, torch_side = json.loads(lines[-4]), json.loads(lines[-3])
  assert jax_side["side"] == "jax" and torch_side["side"] == "torch"
  assert len(jax_side["runs_s"]) == 2 and jax_side["compile_s"] > 0
  assert jax_side["gflop_per_step"] > 0
  # MFU: achieved FLOP/s over the peak of both devices (2 TFLOP/s each).
  assert json.loads(lines[-2])["jax_devices"] == "2 x cpu"
  assert abs(jax_side["mfu"] - jax_side["achieved_gflop_per_s"] / 4000
             ) < 1e-4, jax_side
  assert set(jax_side["conv_backward"]) == {"conv", "subpixel"}
  assert "ratio jax/torch" in lines[-1]
  # Several steps per call: the steps counted, the loop's backward plan.
  lines = stdout_lines(ran, "train_step.py", "per_call")
  jax_side = json.loads(lines[-3])
  assert jax_side["steps_per_call"] == 2 and jax_side["steps_per_s"] > 0
  assert jax_side["gflop_per_step"] > 0
  lines = stdout_lines(ran, "sampling.py", "both")
  assert json.loads(lines[-4])["timesteps"] == 2
  assert "ratio jax/torch (speed)" in lines[-1]
  # --jax_only: no PyTorch side, the JAX time last; --set recorded.
  lines = stdout_lines(ran, "sampling.py", "set")
  jax_side = json.loads(lines[-3])
  assert jax_side["side"] == "jax"
  assert jax_side["set"] == ["model.attention_impl=xla", "model.num_groups=8"]
  assert "torch" not in lines[-1] and lines[-1].endswith("cpu")
  # --ticks: the chain with its in-scan progress ticks against the plain.
  lines = stdout_lines(ran, "sampling.py", "ticks")
  assert [json.loads(l)["side"] for l in lines[-4:-2]] == ["jax",
                                                          "jax_ticks"]
  assert "ticking every 1 steps" in lines[-1], lines[-1]


def test_set_refuses_an_unknown_field_in_one_line():
  p = subprocess.run([sys.executable, "benchmarks/sampling.py", "--config",
                      "smoke", "--jax_only", "--set", "model.heads=4"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1].startswith(
      "error: --set 'model.heads=4'"), p.stderr


@pytest.mark.slow
def test_compile_time_reports_the_step_and_its_parts(ran):
  lines = stdout_lines(ran, "compile_time.py", "parts")
  parts = [json.loads(l) for l in lines[-6:-2]]
  assert [p["part"] for p in parts] == ["forward", "gradient", "update",
                                        "step"]
  for p in parts:
    assert p["compile_s"] > 0 and p["fusions"] > 0, p
    assert p["instructions"] > p["fusions"], p
  assert parts[-1]["param_arrays"] > 0
  assert "jax_devices" in json.loads(lines[-2])
  assert lines[-1].startswith("compile seconds: step ")


@pytest.mark.slow
def test_without_the_test_extra(tmp_path):
  # PyTorch and diffusers made unimportable: --jax_only times the JAX side
  # with a progress line per run; without it, one line says what to do.
  for name in ("torch", "diffusers"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named {name!r}\", "
        f"name={name!r})\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
  args = [sys.executable, "benchmarks/sampling.py", "--config", "smoke",
          "--num", "2", "--timesteps", "2", "--repeats", "2"]
  p = subprocess.run(args + ["--jax_only"], cwd=ROOT, capture_output=True,
                     text=True, timeout=600, env=env)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "jax run 1/2: " in p.stderr and "jax run 2/2: " in p.stderr
  assert json.loads(p.stdout.splitlines()[-3])["side"] == "jax"
  p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                     timeout=600, env=env)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1] == (
      "error: the PyTorch reference side needs 'diffusers': pip install -e "
      "'.[test]', or pass --jax_only"), p.stderr[-2000:]


def test_hlo_costs_count_convolutions_and_dots():
  # ddpm_jax/hlo_costs.py on a compiled program of known work: a 3x3
  # convolution (2 * 4*6*6*8 outputs * 3*3*5 inputs each) and a dot
  # (2 * 7*9 outputs * 11 each), each in its own call.
  from ddpm_jax import hlo_costs
  import jax
  import jax.numpy as jnp
  x = jnp.ones((4, 6, 6, 5))
  w = jnp.ones((3, 3, 5, 8))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  costs = hlo_costs.instruction_costs(conv.lower(x, w).compile().as_text())
  assert max(c.flops for c in costs.values()) == 2 * 4 * 6 * 6 * 8 * 45
  a, b = jnp.ones((7, 11)), jnp.ones((11, 9))
  costs = hlo_costs.instruction_costs(
      jax.jit(jnp.dot).lower(a, b).compile().as_text())
  top = max(costs.values(), key=lambda c: c.flops)
  assert top.flops == 2 * 7 * 9 * 11
  assert top.bytes == 4 * (7 * 11 + 11 * 9 + 7 * 9)


def test_program_flops_count_loops_by_their_trips():
  # A convolution and a dot in one program; a scan of 5 dots (a known trip
  # count); a fori_loop over a traced count (its body once: one step of
  # training.steps_per_call's loop); a cond (its costliest branch).
  from ddpm_jax import hlo_costs
  import jax
  import jax.numpy as jnp
  x, w = jnp.ones((4, 6, 6, 5)), jnp.ones((3, 3, 5, 8))
  a, b = jnp.ones((7, 11)), jnp.ones((11, 11))
  conv_flops, dot_flops = 2 * 4 * 6 * 6 * 8 * 45, 2 * 7 * 11 * 11

  def flops(fn, *args):
    return hlo_costs.program_flops(
        jax.jit(fn).lower(*args).compile().as_text())

  def both(x, w, a, b):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")).sum() + (a @ b).sum()

  assert flops(both, x, w, a, b) == conv_flops + dot_flops
  scan = lambda a, b: jax.lax.scan(lambda c, _: (jnp.tanh(c @ b), None), a,
                                   None, length=5)[0]
  assert flops(scan, a, b) == 5 * dot_flops
  loop = lambda a, b, n: jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(
      c @ b), a)
  assert flops(loop, a, b, jnp.int32(3)) == dot_flops
  cond = lambda a, b, p: jax.lax.cond(p, lambda: (a @ b @ b).sum(),
                                      lambda: (a @ b).sum())
  assert flops(cond, a, b, True) == 2 * dot_flops


@pytest.mark.slow
def test_profile_tables_the_ops_of_a_traced_step_and_sampler(ran):
  lines = stdout_lines(ran, "op_profile.py", "train")
  rows = [json.loads(l) for l in lines if l.startswith('{"op"')]
  summary = json.loads([l for l in lines if l.startswith('{"what"')][0])
  assert summary["module"] == "jit_train_step" and summary["calls"] == 2
  assert rows and sum(r["share"] for r in rows) <= 1.0001
  assert [r["total_ms"] for r in rows] == sorted(
      (r["total_ms"] for r in rows), reverse=True)
  # The convolutions' fusions have a FLOP rate; loops are not rows.
  assert any(r["gflop_per_s"] for r in rows)
  assert not any(r["kind"] == "while" for r in rows)
  assert summary["conv_dot_gflop_per_call"] > 0
  out = pathlib.Path(ran[("benchmarks/op_profile.py", "train")].argv[-1])
  assert list(out.glob("**/*.trace.json.gz"))
  assert lines[-len(rows) - 1].startswith("op ")
  # The sampler: the ops of its scan body run once per step on each
  # device (3 steps, the 2 devices' runs summed).
  lines = stdout_lines(ran, "op_profile.py", "sample")
  rows = [json.loads(l) for l in lines if l.startswith('{"op"')]
  summary = json.loads([l for l in lines if l.startswith('{"what"')][0])
  assert summary["jax_devices"] == "2 x cpu"
  assert max(r["runs_per_call"] for r in rows) == 3 * 2
  assert any(r["gflop_per_s"] and r["runs_per_call"] == 3 * 2 for r in rows)
  # A trace folder that is not empty is refused.
  p = ran[("benchmarks/op_profile.py", "not_empty")]
  assert p.returncode == 1 and "is not empty" in p.stderr.splitlines()[-1]


@pytest.mark.slow
def test_checkpoint_io_compares_plain_and_verified_saves_and_restores(ran):
  # ... and sampling's read of the step and the EMA.
  lines = stdout_lines(ran, "checkpoint_io.py", "sides")
  sides = [json.loads(l) for l in lines[-7:-2]]
  assert [s["side"] for s in sides] == ["plain save", "verified save",
                                        "plain restore", "verified restore",
                                        "sampling read"]
  assert all(s["median_s"] > 0 and s["state_bytes"] > 0 for s in sides)
  assert lines[-1].startswith("verified / plain, median of 1: save ")
