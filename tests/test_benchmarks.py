"""The benchmark scripts run as the README shows and print the ratio last
(smallest settings: this checks that they work, it times nothing)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, devices=None):
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                     text=True, timeout=600, env=env)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout.strip().splitlines()


def test_train_step_and_sampling_benchmarks_print_both_sides_and_ratio():
  lines = run("benchmarks/train_step.py", "--config", "smoke", "--batch",
              "8", "--steps", "1", "--repeats", "2", "--peak_tflops", "2",
              devices=2)
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
  lines = run("benchmarks/sampling.py", "--config", "smoke", "--num", "2",
              "--timesteps", "2", "--repeats", "1")
  assert json.loads(lines[-4])["timesteps"] == 2
  assert "ratio jax/torch (speed)" in lines[-1]
  # --jax_only: no PyTorch side, the JAX time last.
  lines = run("benchmarks/sampling.py", "--config", "smoke", "--num", "2",
              "--timesteps", "2", "--repeats", "1", "--jax_only")
  assert json.loads(lines[-3])["side"] == "jax"
  assert "torch" not in lines[-1] and lines[-1].endswith("cpu")


def test_compile_time_reports_the_step_and_its_parts():
  lines = run("benchmarks/compile_time.py", "--config", "smoke", "--batch",
              "4")
  parts = [json.loads(l) for l in lines[-6:-2]]
  assert [p["part"] for p in parts] == ["forward", "gradient", "update",
                                        "step"]
  for p in parts:
    assert p["compile_s"] > 0 and p["fusions"] > 0, p
    assert p["instructions"] > p["fusions"], p
  assert parts[-1]["param_arrays"] > 0
  assert "jax_devices" in json.loads(lines[-2])
  assert lines[-1].startswith("compile seconds: step ")


def test_without_the_test_extra(tmp_path):
  # PyTorch and diffusers made unimportable: --jax_only times the JAX side
  # with a progress line per run; without it, one line says what to do.
  for name in ("torch", "diffusers"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named {name!r}\", "
        f"name={name!r})\n")
  env = dict(os.environ, PYTHONPATH=str(tmp_path))
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
