"""Workdirs, models and outputs in a bucket (``gs://...``), end to end
against a real GCS server (tests/gcs_emulator.py): nothing is written to a
local path when a URL is given, a run resumes from the bucket, and the
sampler, evaluator and exporter read and write there."""

import json
import os
import time

import numpy as np
import pytest

from tests import gcs_emulator
from tests.test_train_cli import ONE_LEVEL, ROOT, TINY, error_line, run

BUCKET = "ddpm-test"


@pytest.fixture(scope="module")
def gcs():
  """The GCS server of this session (tests/conftest.py set every client's
  environment for it), running with BUCKET; its client environment."""
  from tests.conftest import GCS_URL
  with gcs_emulator.emulator(GCS_URL, BUCKET):
    yield gcs_emulator.client_env(GCS_URL)


def _local_leftovers():
  # A URL mistaken for a local path lands in a folder named 'gs:'.
  return [p for p in (os.path.join(ROOT, "gs:"), os.path.join(os.getcwd(),
                                                               "gs:"))
          if os.path.exists(p)]


@pytest.fixture(scope="module")
def trained(gcs):
  """A tiny run trained for 3 steps in the bucket: its workdir URL."""
  wd = f"gs://{BUCKET}/run"
  p = run("train.py", *TINY, *ONE_LEVEL, "--workdir", wd,
          "--config.training.num_steps=3", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  return wd


@pytest.mark.slow
def test_train_writes_only_to_the_bucket_and_resumes_from_it(gcs, trained):
  from ddpm_jax import paths
  names = paths.listdir(trained)
  assert {"config.json", "checkpoints", "samples", "tensorboard"} <= set(
      names), names
  assert json.loads(paths.read_text(f"{trained}/config.json"))[
      "training"]["num_steps"] == 3
  assert "3" in paths.listdir(f"{trained}/checkpoints")
  assert paths.listdir(f"{trained}/samples") == ["step_00000003.npz",
                                                 "step_00000003.png"]
  events = paths.listdir(f"{trained}/tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  assert len(paths.read_bytes(f"{trained}/tensorboard/{events[0]}")) > 100
  assert not _local_leftovers()
  # Resume in the bucket.
  p = run("train.py", *TINY, *ONE_LEVEL, "--workdir", trained,
          "--config.training.num_steps=4", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Resuming from" in p.stdout and "at step 3" in p.stdout, p.stdout
  assert "4" in paths.listdir(f"{trained}/checkpoints")
  assert not _local_leftovers()


@pytest.mark.slow
def test_sample_evaluate_and_export_in_the_bucket(gcs, trained, tmp_path):
  from ddpm_jax import paths
  out = f"gs://{BUCKET}/outputs/s"
  p = run("sample.py", "--workdir", trained, "--num", "4", "--batch_size",
          "4", "--out", out, env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  imgs = paths.load_npz(out + ".npz")["images"]
  assert imgs.shape == (4, 8, 8, 1) and imgs.dtype == np.uint8
  p = run("evaluate.py", "--workdir", trained, "--num", "8", "--batch_size",
          "8", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert json.loads(p.stdout.strip().splitlines()[-1])["num_examples"] == 8
  exported = f"gs://{BUCKET}/exported"
  p = run("-m", "ddpm_jax.interop.export", "--workdir", trained, "--out",
          exported, env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert paths.listdir(exported) == [
      "config.json", "diffusion_pytorch_model.safetensors",
      "scheduler_config.json"]
  # The exported model, read back from the bucket, draws the same samples
  # as the workdir it came from.
  p = run("sample.py", "--model", exported, "--num", "4", "--batch_size",
          "4", "--out", out + "_model", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  np.testing.assert_array_equal(
      paths.load_npz(out + "_model.npz")["images"], imgs)
  assert not _local_leftovers()


def test_a_missing_bucket_is_a_one_line_error(gcs, tmp_path):
  start = time.time()
  line = error_line(run("train.py", *TINY, "--workdir", "gs://no-such/run",
                        "--config.training.num_steps=1", env=gcs))
  assert "gs://no-such" in line and "does not exist" in line, line
  assert time.time() - start < 60
  line = error_line(run("sample.py", "--workdir", "gs://no-such/run",
                        env=gcs))
  assert "gs://no-such" in line, line
  assert not _local_leftovers()


@pytest.mark.slow
def test_sigkill_and_restart_in_the_bucket_matches_uninterrupted_run(gcs):
  import subprocess
  import sys
  p = subprocess.run([sys.executable, "tests/scripts/kill_resume.py",
                      "--kills", "2", "--steps", "8", "--seed", "2",
                      "--workdir", f"gs://{BUCKET}/kill"], cwd=ROOT,
                     env=dict(os.environ, **gcs), capture_output=True,
                     text=True, timeout=1200)
  assert p.stdout.strip(), p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert p.returncode == 0, (result, p.stderr[-3000:])
  assert result["kills"] == 2
  assert result["max_abs_diff"] <= 1e-6 and result["int_leaves_equal"]
  assert not _local_leftovers()


@pytest.mark.slow
def test_sigterm_then_a_damaged_newest_checkpoint_in_the_bucket(gcs):
  import signal
  import subprocess
  import sys
  from ddpm_jax import paths
  wd = f"gs://{BUCKET}/term"
  proc = subprocess.Popen(
      [sys.executable, "train.py", *TINY, *ONE_LEVEL, "--workdir", wd,
       "--config.training.num_steps=100000"], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **gcs),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not (paths.isdir(f"{wd}/checkpoints") and
               len(paths.listdir(f"{wd}/checkpoints")) >= 2):
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  steps = sorted(int(s) for s in paths.listdir(f"{wd}/checkpoints"))
  newest = steps[-1]
  assert f"SIGTERM: saved the checkpoint of step {newest}" in out + err
  # Truncate every object of the newest checkpoint, as a crash mid-write
  # would leave it.
  for f in paths.walk_files(f"{wd}/checkpoints/{newest}"):
    data = paths.read_bytes(f)
    paths.write_bytes(f, data[:len(data) // 2])
  p = run("train.py", *TINY, *ONE_LEVEL, "--workdir", wd,
          f"--config.training.num_steps={newest + 1}", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"checkpoint {newest} is unreadable" in p.stderr, p.stderr[-3000:]
  assert f"moved it to {wd}/checkpoints_unreadable/{newest}" in p.stderr
  assert f"at step {steps[-2]}" in p.stdout, p.stdout
  assert paths.listdir(f"{wd}/checkpoints_unreadable") == [str(newest)]
  assert newest + 1 in [int(s) for s in paths.listdir(f"{wd}/checkpoints")]
  assert not _local_leftovers()


@pytest.mark.slow
def test_two_hosts_preempted_and_resumed_in_the_bucket(gcs):
  import re
  import signal
  from ddpm_jax import paths
  from tests.test_multihost import (assert_same_state, finish, saved_state,
                                    start_job)
  # SIGTERM to the second host of a 2-process x 2-device job: both save
  # the same step in the bucket and exit.
  pre = f"gs://{BUCKET}/multihost_pre"
  procs = start_job(pre, "--config.training.num_steps=100000",
                    "--config.training.checkpoint_every=100000",
                    "--config.training.sample_every=0")
  try:
    deadline = time.time() + 300
    while not paths.exists(f"{pre}/config.json"):
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.5)
    time.sleep(5)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    outs = finish(procs)
  said = re.findall(r"preemption: saved the checkpoint of step (\d+)",
                    outs[0])
  assert said, outs[0][-2000:]
  step = int(said[0])
  assert paths.listdir(f"{pre}/checkpoints") == [str(step)]
  # Resumed to step + 2, it ends exactly where an uninterrupted job does.
  total = step + 2
  job = f"gs://{BUCKET}/multihost_job"
  finish(start_job(job, f"--config.training.num_steps={total}",
                   "--config.training.checkpoint_every=100000",
                   "--config.training.sample_every=0"))
  finish(start_job(pre, f"--config.training.num_steps={total}",
                   "--config.training.checkpoint_every=100000",
                   "--config.training.sample_every=0"))
  assert_same_state(saved_state(job, total), saved_state(pre, total),
                    rel=1e-6)
  assert not _local_leftovers()


def test_no_endpoint_and_no_credentials_are_one_line_errors_within_60s(gcs):
  import subprocess
  import sys
  # An endpoint nobody listens on, and real GCS without credentials (or
  # network): each stops with one line naming the bucket, in time.
  unreachable = dict(os.environ, **gcs)
  unreachable.update(STORAGE_EMULATOR_HOST="http://127.0.0.1:9",
                     TENSORSTORE_GCS_HTTP_URL="http://127.0.0.1:9")
  real = {k: v for k, v in os.environ.items()
          if k not in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                       "FSSPEC_GS")}
  real["GOOGLE_APPLICATION_CREDENTIALS"] = "/nonexistent/credentials.json"
  start = time.time()
  procs = [subprocess.Popen(
      [sys.executable, "sample.py", "--workdir", "gs://ddpm-elsewhere/run"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for env in (unreachable, real)]
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert time.time() - start < 60, err[-2000:]
    line = error_line(subprocess.CompletedProcess(p.args, p.returncode, out,
                                                  err))
    assert "gs://ddpm-elsewhere" in line, line
  assert not _local_leftovers()
