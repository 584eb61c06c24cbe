"""train.py and sample.py end to end on a tiny digits config: checkpoints,
resume, sample grids, and one-line errors for bad arguments."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import (error_line, run_entries_in_one_process,
                             run_until_signalled)
from tests.tiny_configs import TINY_ARGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The suite's shared config (tests/tiny_configs.py).
TINY = TINY_ARGS


def run(script, *args, env=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def read_scalars(logdir):
  """{tag: {step: value}} from the TensorBoard event files in ``logdir``."""
  import tensorflow as tf
  out = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(logdir, name)):
      for v in event.summary.value:
        out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


def _files(root):
  """{relative path: (size, mtime, bytes)} of every file under ``root``."""
  out = {}
  for d, _, names in os.walk(root):
    for name in names:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = (os.path.getsize(path),
                                            os.stat(path).st_mtime_ns,
                                            f.read())
  return out


@pytest.mark.slow
def test_train_resume_and_sample(tmp_path):
  wd = str(tmp_path / "run")
  p = run("train.py", *TINY, "--workdir", wd, "--config.training.num_steps=3")
  assert p.returncode == 0, p.stderr[-3000:]
  steps = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  assert steps == ["2", "3"], steps
  assert os.path.isfile(os.path.join(wd, "samples", "step_00000003.png"))
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["diffusion"]["num_timesteps"] == 20
  scalars = read_scalars(os.path.join(wd, "tensorboard"))
  for tag in ("loss", "grad_norm", "learning_rate", "steps_per_s",
              "img_per_s"):
    assert sorted(scalars[f"train/{tag}"]) == [1, 2, 3], tag
  # warmup_steps=2: step 1 updates with lr 0, step 2 with lr/2, then lr.
  lr = scalars["train/learning_rate"]
  assert lr[1] == 0.0 and lr[2] == pytest.approx(5e-4) and lr[3] == pytest.approx(1e-3)
  assert all(np.isfinite(v) and v > 0 for v in scalars["train/loss"].values())
  # The same metrics go to stdout, one line per log_every steps.
  lines = [l for l in p.stdout.splitlines() if l.startswith("step ")
           and "loss" in l]
  assert [l.split(":")[0] for l in lines] == ["step 1", "step 2", "step 3"]
  assert f"loss {scalars['train/loss'][3]:.5f}" in lines[-1], lines[-1]

  # The same command again (on a copy): a finished run, nothing to do and
  # nothing written (no config rewritten, no new event file), file by
  # file. Then with more steps: continues from step 3, not from 0.
  finished = str(tmp_path / "finished")
  shutil.copytree(wd, finished)  # (times kept)
  before = _files(finished)
  [[again, p]] = run_entries_in_one_process([("train.py", [
      [*TINY, "--workdir", finished, "--config.training.num_steps=3"],
      [*TINY, "--workdir", wd, "--config.training.num_steps=5"]])])
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip() == (f"{finished} is already at step 3 of 3 "
                                  f"(training.num_steps): nothing to do")
  assert _files(finished) == before
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Resuming from" in p.stdout and "at step 3" in p.stdout, p.stdout
  assert "4" in os.listdir(os.path.join(wd, "checkpoints"))
  assert "5" in os.listdir(os.path.join(wd, "checkpoints"))

  out = str(tmp_path / "s")
  p = run("sample.py", "--workdir", wd, "--num", "6", "--batch_size", "4",
          "--seed", "1", "--out", out, "--profile")
  assert p.returncode == 0, p.stderr[-3000:]
  # --profile: a trace of the sampling beside the outputs.
  assert glob.glob(f"{out}_profile/plugins/profile/*/*.xplane.pb")
  assert f"and the profile in {out}_profile/" in p.stdout, p.stdout
  imgs = np.load(out + ".npz")["images"]
  assert imgs.shape == (6, 8, 8, 1) and imgs.dtype == np.uint8
  assert os.path.getsize(out + ".png") > 100
  # Quiet: none of Orbax's routine notes on a read-only restore, and a
  # progress bar for the sampling.
  for note in ("read only", "read_only", "Metadata file does not exist"):
    assert note not in p.stderr, p.stderr[-2000:]
  assert "sampling 6 (20 steps)" in p.stderr, p.stderr[-2000:]
  # The other sample.py, evaluate.py and exporter runs go a few to a
  # process (tests/processes.py), in this order.
  ddim = ["--num", "6", "--batch_size", "4", "--seed", "1", "--sampler",
          "ddim", "--steps", "5", "--eta", "0.5"]
  fig = str(tmp_path / "fig")
  before = open(out + ".npz", "rb").read()
  exported = str(tmp_path / "exported")
  # With the first export to diffusers (checked below), in one process.
  [(same_seed, bf16_run, fast_run, eta_alone, ddim_again, trailing_run,
    taken, prog, part, interp, interp_bad),
   (first,)] = run_entries_in_one_process([("sample.py", [
       ["--workdir", wd, "--num", "6", "--batch_size", "4", "--seed", "1",
        "--out", out + "b"],
       ["--workdir", wd, "--num", "6", "--batch_size", "4", "--seed", "1",
        "--dtype", "bfloat16"],
       ["--workdir", wd, *ddim],
       ["--workdir", wd, "--eta", "0.5", "--out", out + "x"],
       ["--workdir", wd, *ddim],
       ["--workdir", wd, *ddim, "--spacing", "trailing"],
       ["--workdir", wd, "--num", "2", "--out", out],
       ["--workdir", wd, "--progressive", "5", "--num", "2", "--out",
        fig + "_prog"],
       ["--workdir", wd, "--partial", "0,3", "--t", "10", "--num", "3",
        "--out", fig + "_part"],
       ["--workdir", wd, "--interpolate", "0,1", "--t", "0", "--lambdas",
        "3", "--out", fig + "_interp"],
       ["--workdir", wd, "--interpolate", "0", "--out", fig + "_bad"]]),
       ("ddpm_jax.interop.export", [["--workdir", wd, "--out", exported]])])
  # Deterministic in the seed.
  assert same_seed.returncode == 0, same_seed.stderr[-3000:]
  np.testing.assert_array_equal(np.load(out + "b.npz")["images"], imgs)
  # The U-Net in bfloat16 (--dtype): its own name, its dtype in the
  # sidecar, and samples near the float32 ones (this barely trained
  # model's output is near 0, so here they are nearly the same;
  # tests/test_precision.py compares the bf16 sampler on a real output).
  assert bf16_run.returncode == 0, bf16_run.stderr[-3000:]
  bf16 = os.path.join(wd, "samples", "sample_seed1_step5_bf16")
  assert json.load(open(bf16 + ".json"))["dtype"] == "bfloat16"
  assert json.load(open(out + ".json"))["dtype"] == "float32"
  bf16_imgs = np.load(bf16 + ".npz")["images"].astype(int)
  assert np.abs(bf16_imgs - imgs).mean() < 8, np.abs(bf16_imgs - imgs).mean()
  # DDIM in 5 steps, named after the sampler; --eta needs --sampler=ddim.
  assert fast_run.returncode == 0, fast_run.stderr[-3000:]
  fast = np.load(os.path.join(wd, "samples",
                              "sample_seed1_step5_ddim5_eta0.5.npz"))["images"]
  assert fast.shape == imgs.shape and not np.array_equal(fast, imgs)
  line = error_line(eta_alone)
  assert "--sampler=ddim" in line and not os.path.exists(out + "x.npz")
  # Nothing is overwritten: the same settings again take the next free
  # name, another spacing its own name, and an explicit --out that exists
  # is a one-line error that leaves it as it was. Each output has a JSON
  # sidecar with every setting.
  assert ddim_again.returncode == 0, ddim_again.stderr[-3000:]
  again = os.path.join(wd, "samples", "sample_seed1_step5_ddim5_eta0.5_2")
  assert f"wrote {again}.png" in ddim_again.stdout, ddim_again.stdout
  np.testing.assert_array_equal(np.load(again + ".npz")["images"], fast)
  assert trailing_run.returncode == 0, trailing_run.stderr[-3000:]
  trailing = os.path.join(wd, "samples",
                          "sample_seed1_step5_ddim5_trailing_eta0.5")
  settings = json.load(open(trailing + ".json"))
  assert settings["sampling"]["spacing"] == "trailing"
  assert settings["step"] == 5 and settings["seed"] == 1 and settings["ema"]
  assert settings["source"] == wd and settings["num"] == 6
  np.testing.assert_array_equal(
      np.load(os.path.join(wd, "samples", "sample_seed1_step5_ddim5_eta0.5"
                           ".npz"))["images"], fast)
  line = error_line(taken)
  assert line == f"error: {out}.png exists: choose another --out (outputs " \
      "are never overwritten)", line
  assert open(out + ".npz", "rb").read() == before
  # The paper's figures: progressive (Fig. 6), partial chains (Fig. 7),
  # interpolation (Fig. 8; at t=0 its ends are the held-out images).
  assert prog.returncode == 0, prog.stderr[-3000:]
  traj = np.load(fig + "_prog_trajectory.npz")
  assert traj["x0"].shape == (4, 2, 8, 8, 1) and os.path.exists(
      fig + "_prog.gif")
  assert part.returncode == 0, part.stderr[-3000:]
  assert np.load(fig + "_part.npz")["samples"].shape == (2, 3, 8, 8, 1)
  assert interp.returncode == 0, interp.stderr[-3000:]
  from ddpm_jax import data, images
  held_out = images.to_uint8(data.digits_images("test")[:2])
  mixed = np.load(fig + "_interp.npz")["images"]
  np.testing.assert_array_equal(mixed[0], held_out[0])
  np.testing.assert_array_equal(mixed[-1], held_out[1])
  assert "two image indices" in error_line(interp_bad)

  # Exported to diffusers; exporting again onto the same directory is
  # refused and changes nothing; without --out the export goes into the
  # workdir (never the current directory).
  assert first.returncode == 0, first.stderr[-3000:]
  assert sorted(os.listdir(exported)) == [
      "config.json", "diffusion_pytorch_model.safetensors",
      "scheduler_config.json"]
  with open(os.path.join(exported, "scheduler_config.json")) as f:
    assert json.load(f)["num_train_timesteps"] == 20
  before = {f: os.path.getmtime(os.path.join(exported, f))
            for f in os.listdir(exported)}
  # The rest in one process: the second exports, sampling from them, and
  # evaluate.py (checked further below).
  default = os.path.join(wd, "diffusers_step5")
  [(refused, default_run), (from_exported, from_default),
   (score_run, fid_run, model_score_run,
    no_dataset)] = run_entries_in_one_process([
        ("ddpm_jax.interop.export", [["--workdir", wd, "--out", exported],
                                     ["--workdir", wd]]),
        ("sample.py", [
            ["--model", exported, "--num", "6", "--batch_size", "4",
             "--seed", "1", "--out", out + "c"],
            ["--model", default, "--num", "6", "--batch_size", "4",
             "--seed", "1"]]),
        ("evaluate.py", [
            ["--workdir", wd, "--metric", "digits", "--num", "8", "--steps",
             "5"],
            ["--workdir", wd, "--metric", "fid", "--inception",
             str(tmp_path / "none.safetensors")],
            ["--model", exported, "--dataset", "digits", "--metric",
             "digits", "--num", "8", "--steps", "5"],
            ["--model", exported]])])
  assert "already exists" in error_line(refused)
  assert before == {f: os.path.getmtime(os.path.join(exported, f))
                    for f in os.listdir(exported)}
  assert default_run.returncode == 0, default_run.stderr[-3000:]
  assert f"wrote {default} (step 5" in default_run.stdout, default_run.stdout
  name = "diffusion_pytorch_model.safetensors"
  assert open(os.path.join(default, name), "rb").read() == open(
      os.path.join(exported, name), "rb").read()
  # Sampled from the exported directories with the exported scheduler
  # config (T=20): same model, same samples; the samples of a --model go
  # into the model's folder.
  assert from_exported.returncode == 0, from_exported.stderr[-3000:]
  np.testing.assert_array_equal(np.load(out + "c.npz")["images"], imgs)
  assert from_default.returncode == 0, from_default.stderr[-3000:]
  np.testing.assert_array_equal(np.load(os.path.join(
      default, "samples", "sample_seed1.npz"))["images"], imgs)

  # The offline digits score of the trained workdir and of the exported
  # model (given its data), one JSON line each; FID without the Inception
  # weights says where to get them, before sampling.
  assert score_run.returncode == 0, score_run.stderr[-3000:]
  score = json.loads(score_run.stdout.strip().splitlines()[-1])
  assert score["num_samples"] == 8 and score["steps"] == 5
  assert score["digits_fid"] > 0 and 0 < score["confidence"] <= 1
  line = error_line(fid_run)
  assert "download https://" in line and "inception_weights" in line
  assert model_score_run.returncode == 0, model_score_run.stderr[-3000:]
  score = json.loads(model_score_run.stdout.strip().splitlines()[-1])
  assert score["num_samples"] == 8 and score["step"] is None
  assert "--dataset" in error_line(no_dataset)


@pytest.mark.slow
def test_bad_arguments_give_one_line_errors(tmp_path):
  from ddpm_jax import checkpoints
  from tests.tiny_configs import tiny_config
  wd = str(tmp_path / "w")
  # A workdir with a config but no checkpoint yet.
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  checkpoints.write_config(empty, tiny_config())
  # One whose config.json lost a section (tests/test_saved_config.py has
  # the other cases): refused, not completed from the defaults.
  partial = str(tmp_path / "partial")
  os.makedirs(partial)
  checkpoints.write_config(partial, tiny_config())
  with open(os.path.join(partial, "config.json")) as f:
    saved = json.load(f)
  del saved["diffusion"]
  with open(os.path.join(partial, "config.json"), "w") as f:
    json.dump(saved, f)
  # A model directory we cannot convert.
  bad = tmp_path / "bad_model"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps(
      {"_class_name": "UNet2DModel", "sample_size": 8,
       "down_block_types": ["CrossAttnDownBlock2D"] * 4}))
  out = str(tmp_path / "never")
  # Every command in one process (tests/processes.py), in this order.
  [train_runs, sample_runs] = run_entries_in_one_process([
      ("train.py", [
          ["--config", "configs/nope.py", "--workdir", wd],
          ["--config", "configs/digits.py", "--workdir", wd,
           "--config.training.no_such_key=1"],
          ["--config", "configs/digits.py", "--workdir", wd,
           "--config.training.batch_size=0"]]),
      ("sample.py", [
          ["--workdir", wd], ["--workdir", empty], ["--workdir", partial],
          # --model: neither or both sources, a missing path, a model
          # directory we cannot convert. Nothing is written.
          [], ["--model", str(tmp_path / "none")],
          ["--model", str(bad), "--out", out]])])
  nope, no_key, zero_batch = (error_line(r) for r in train_runs)
  assert "configs/nope.py" in nope
  assert "no_such_key" in no_key
  assert "training.batch_size" in zero_batch
  assert not os.path.exists(os.path.join(wd, "checkpoints"))
  (no_config, no_checkpoint, no_section, no_source, missing,
   cannot_convert) = (error_line(r) for r in sample_runs)
  assert no_config == (f"error: --workdir {wd} does not exist: give the "
                       f"workdir of a train.py run")
  assert "no checkpoint" in no_checkpoint
  assert "config.json has no 'diffusion' section" in no_section, no_section
  assert "--workdir" in no_source and "--model" in no_source
  assert "does not exist" in missing
  assert "CrossAttnDownBlock2D" in cannot_convert
  assert not os.path.exists(out + ".png") and not os.path.exists(out + ".npz")


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_stops(tmp_path):
  wd = str(tmp_path / "run")
  # Four steps per jitted call, logged after each: the signal is honoured
  # between calls; it is sent once the first call's steps are logged
  # (whatever the machine's load).
  returncode, out, err = run_until_signalled(
      ["train.py", *TINY, "--workdir", wd,
       "--config.training.num_steps=100000",
       "--config.training.checkpoint_every=100000",
       "--config.training.steps_per_call=4",
       "--config.training.log_every=4"],
      lambda output: output.has("step 4: loss"), signal.SIGTERM)
  assert returncode == 0, err[-3000:]
  steps = os.listdir(os.path.join(wd, "checkpoints"))
  assert len(steps) == 1 and int(steps[0]) > 0, steps
  assert int(steps[0]) % 4 == 0, steps  # between calls of 4 steps
  # Soon after step 4's log line: train.py flushes each log line (through
  # a block buffer it would show up about 100 lines, 400 steps, late).
  assert int(steps[0]) <= 100, steps
  assert f"SIGTERM: saved the checkpoint of step {steps[0]}" in out + err
  # The same workdir with another model: one line naming the array and the
  # fix, before any read starts (no stray traceback at exit); the
  # checkpoint and config.json are left as they were.
  with open(os.path.join(wd, "config.json")) as f:
    config_before = f.read()
  line = error_line(run("train.py", *TINY, "--config.model.ch=64",
                        "--workdir", wd, "--config.training.num_steps=3"))
  assert "params.conv_in.bias has shape (32,)" in line, line
  assert "use the config that trained it" in line
  assert os.listdir(os.path.join(wd, "checkpoints")) == steps
  with open(os.path.join(wd, "config.json")) as f:
    assert f.read() == config_before
  # sample.py on a workdir whose config.json names another model: the
  # same line (restoring it used to leave asyncio tracebacks at exit).
  other = str(tmp_path / "other")
  shutil.copytree(wd, other)
  edited = json.loads(config_before)
  edited["model"]["ch"] = 64
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(edited, f)
  line = error_line(run("sample.py", "--workdir", other, "--out",
                        str(tmp_path / "never")))
  assert "params.conv_in.bias has shape (32,)" in line, line
  assert not os.path.exists(str(tmp_path / "never") + ".npz")


@pytest.mark.slow
def test_sigterm_during_start_up_stops_cleanly(tmp_path):
  # The moment the workdir appears (long before the first step): exit 0,
  # one line, no checkpoint (nothing has been trained).
  wd = str(tmp_path / "run")
  returncode, out, err = run_until_signalled(
      ["train.py", *TINY, "--workdir", wd,
       "--config.training.num_steps=100000"],
      lambda _: os.path.isdir(wd), signal.SIGTERM)
  assert returncode == 0, err[-3000:]
  assert "SIGTERM: stopped before the first step; nothing new to save" in (
      out), out[-2000:]
  assert not os.path.exists(os.path.join(wd, "checkpoints")) or not (
      os.listdir(os.path.join(wd, "checkpoints")))


@pytest.mark.parametrize("entry", ["train.py", "sample.py", "evaluate.py",
                                   "train_classifier.py",
                                   "-m ddpm_jax.interop.export"])
@pytest.mark.slow
def test_help_succeeds(entry):
  p = run(*entry.split(), "--help")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "--workdir" in p.stdout
  assert run(*entry.split(), "--no_such_flag").returncode == 1


@pytest.mark.slow
def test_config_and_data_errors_come_before_anything_is_written(tmp_path):
  wd = str(tmp_path / "run")
  # A dataset that is not prepared, with downloads off: one line, and no
  # workdir (no config.json, TensorBoard file or checkpoints/).
  line = error_line(run("train.py", "--config", "configs/cifar10.py",
                        "--workdir", wd, "--config.data.download=False",
                        f"--config.data.data_dir={tmp_path / 'tfds'}"))
  assert "data.download is False" in line and "tfds build cifar10" in line
  assert not os.path.exists(wd)
  # A config file's own error (an unknown Table 2 row) is shown, not
  # ml_collections' "Error whilst parsing config file".
  line = error_line(run("train.py", "--config",
                        "configs/cifar10_table2.py:nosuch", "--workdir", wd))
  assert "unknown Table 2 row 'nosuch'" in line and "eps_mse" in line, line
  assert not os.path.exists(wd)


@pytest.mark.slow
def test_train_classifier_shows_progress(tmp_path):
  wd = str(tmp_path / "clf")
  # T=20, as the classifier of tests/test_classifier_guidance.py: the same
  # programs. Processes of their own: the entry point as users run it.
  args = ["train_classifier.py", "--config", "configs/digits_classifier.py",
          "--workdir", wd, "--config.training.num_steps=3",
          "--config.training.log_every=1",
          "--config.diffusion.num_timesteps=20"]
  p = run(*args)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "train classifier: 100%" in p.stderr, p.stderr[-2000:]
  lines = p.stdout.strip().splitlines()
  assert [l.split(":")[0] for l in lines[:-1] if l.startswith("step ")] == [
      "step 1", "step 2", "step 3"]
  assert "held_out_accuracy_at_t" in json.loads(lines[-1])
  # Again into the same workdir: refused in one line, nothing replaced.
  assert "give a new --workdir" in error_line(run(*args))
