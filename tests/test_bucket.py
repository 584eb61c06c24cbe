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
from tests.processes import wait_then_signal
from tests.test_train_cli import ROOT, TINY, error_line, run

BUCKET = "ddpm-test"


# Folders under the repository that tests and tools write by design.
_OWN = {".git", ".venv", "__pycache__", ".pytest_cache"}


def _local_files():
  """Every file and folder under the repository and the current
  directory, but for _OWN and the package's egg-info."""
  found = set()
  for top in {ROOT, os.getcwd()}:
    for folder, dirs, files in os.walk(top):
      dirs[:] = [d for d in dirs
                 if d not in _OWN and not d.endswith(".egg-info")]
      found.update(os.path.join(folder, n) for n in dirs + files)
  return found


_BEFORE = set()


@pytest.fixture(scope="module")
def gcs():
  """The GCS server of this session (tests/conftest.py set every client's
  environment for it), running with BUCKET; its client environment."""
  from tests.conftest import GCS_URL
  _BEFORE.update(_local_files())
  with gcs_emulator.emulator(GCS_URL, BUCKET):
    yield gcs_emulator.client_env(GCS_URL)


def _local_leftovers():
  """What appeared under the repository or the current directory since
  the server started (a URL mistaken for a local path lands in a folder
  named 'gs:'; a missing --workdir or --out in ./workdir or ./samples)."""
  return sorted(_local_files() - _BEFORE)


def _upload(folder, url):
  """Copies local ``folder`` to ``url``, as ``gcloud storage cp -r``."""
  from ddpm_jax import paths
  for f in paths.walk_files(folder):
    paths.write_bytes(paths.join(url, os.path.relpath(f, folder)),
                      paths.read_bytes(f))


@pytest.fixture(scope="module")
def trained(gcs):
  """A tiny run trained for 3 steps in the bucket, with a profile of steps
  2 to 3: its workdir URL."""
  wd = f"gs://{BUCKET}/run"
  p = run("train.py", *TINY, "--workdir", wd,
          "--config.training.num_steps=3",
          "--config.training.profile_steps=2:3", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  return wd


@pytest.mark.slow
def test_train_writes_only_to_the_bucket_and_resumes_from_it(gcs, trained):
  from ddpm_jax import paths
  names = paths.listdir(trained)
  assert {"config.json", "checkpoints", "samples", "tensorboard",
          "profile"} <= set(names), names
  [run_dir] = paths.listdir(f"{trained}/profile/plugins/profile")
  assert [n for n in paths.listdir(
      f"{trained}/profile/plugins/profile/{run_dir}")
          if n.endswith(".xplane.pb")], run_dir
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
  p = run("train.py", *TINY, "--workdir", trained,
          "--config.training.num_steps=4", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Resuming from" in p.stdout and "at step 3" in p.stdout, p.stdout
  assert "4" in paths.listdir(f"{trained}/checkpoints")
  assert not _local_leftovers()


@pytest.mark.slow
def test_sample_evaluate_and_export_in_the_bucket(gcs, trained, tmp_path):
  from ddpm_jax import paths
  from tests.processes import run_entries_in_one_process
  del gcs  # its client environment is the session's (tests/conftest.py)
  out = f"gs://{BUCKET}/outputs/s"
  exported = f"gs://{BUCKET}/exported"
  # Exported, sampled from the workdir and from the export, evaluated: in
  # one process (tests/processes.py).
  [(export,), (sampled, from_model), (evaluated,)] = (
      run_entries_in_one_process([
          ("ddpm_jax.interop.export", [["--workdir", trained, "--out",
                                        exported]]),
          ("sample.py", [["--workdir", trained, "--num", "4",
                          "--batch_size", "4", "--out", out],
                         ["--model", exported, "--num", "4", "--batch_size",
                          "4", "--out", out + "_model"]]),
          ("evaluate.py", [["--workdir", trained, "--num", "8",
                            "--batch_size", "8"]])]))
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  imgs = paths.load_npz(out + ".npz")["images"]
  assert imgs.shape == (4, 8, 8, 1) and imgs.dtype == np.uint8
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout.strip().splitlines()[-1])[
      "num_examples"] == 8
  assert export.returncode == 0, export.stderr[-3000:]
  assert paths.listdir(exported) == [
      "config.json", "diffusion_pytorch_model.safetensors",
      "scheduler_config.json"]
  # The exported model, read back from the bucket, draws the same samples
  # as the workdir it came from.
  assert from_model.returncode == 0, from_model.stderr[-3000:]
  np.testing.assert_array_equal(
      paths.load_npz(out + "_model.npz")["images"], imgs)
  assert not _local_leftovers()


@pytest.mark.slow
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
                      # 12 steps: with 8, one cold suite run (2026-12-07)
                      # ended after one kill; the script stops killing
                      # once the latest checkpoint is 2 steps from the end
                      # or the run finishes first. killed_at says where.
                      "--kills", "2", "--steps", "12", "--seed", "2",
                      "--workdir", f"gs://{BUCKET}/kill"], cwd=ROOT,
                     env=dict(os.environ, **gcs), capture_output=True,
                     text=True, timeout=1200)
  assert p.stdout.strip(), p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert p.returncode == 0, (result, p.stderr[-3000:])
  assert result["kills"] == 2, result
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
      [sys.executable, "train.py", *TINY, "--workdir", wd,
       "--config.training.num_steps=100000"], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **gcs),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_then_signal([proc], lambda: paths.isdir(f"{wd}/checkpoints") and len(
        paths.listdir(f"{wd}/checkpoints")) >= 2, signal.SIGTERM)
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
  p = run("train.py", *TINY, "--workdir", wd,
          f"--config.training.num_steps={newest + 1}", env=gcs)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"checkpoint {newest} is unreadable" in p.stderr, p.stderr[-3000:]
  assert f"moved it to {wd}/checkpoints_unreadable/{newest}" in p.stderr
  assert f"at step {steps[-2]}" in p.stdout, p.stdout
  assert paths.listdir(f"{wd}/checkpoints_unreadable") == [str(newest)]
  assert newest + 1 in [int(s) for s in paths.listdir(f"{wd}/checkpoints")]
  assert not _local_leftovers()


def test_tensorboard_events_in_the_bucket_go_on_in_parts(gcs, tmp_path,
                                                        monkeypatch):
  # An object cannot be appended to: each flush rewrites the newest part,
  # which is closed at a flush once it holds PART_BYTES (here after every
  # 10 or so scalars); TensorBoard reads the parts in name order as one
  # run.
  from ddpm_jax import paths
  from ddpm_jax.run import summary
  from tests.test_train_cli import read_scalars
  monkeypatch.setattr(summary, "PART_BYTES", 400)
  logdir = f"gs://{BUCKET}/events/tensorboard"
  writer = summary.summary_writer(f"gs://{BUCKET}/events")
  for step in range(1, 61):
    writer.add_scalar("train/loss", 1.0 / step, step)
    if step % 5 == 0:
      writer.flush()
  writer.close()
  names = sorted(paths.listdir(logdir))
  assert len(names) > 3 and names[0].startswith("events.out.tfevents"), names
  assert all(n.startswith(names[0]) for n in names)
  for i, n in enumerate(names):
    # Every part but the newest was closed once it held PART_BYTES; none
    # is empty. (How far past PART_BYTES a part goes is not fixed:
    # tensorboardX's flush does not wait for its logging thread, so the
    # records of several flushes can land together.) Each part is read
    # as a file of its own below: a record split between parts fails it.
    part = paths.read_bytes(f"{logdir}/{n}")
    assert len(part) >= (400 if i < len(names) - 1 else 1), n
    (tmp_path / n).write_bytes(part)
  loss = read_scalars(str(tmp_path))["train/loss"]
  assert sorted(loss) == list(range(1, 61))
  np.testing.assert_allclose([loss[s] for s in range(1, 61)],
                             [1.0 / s for s in range(1, 61)], rtol=1e-6)
  # tensorboardX writes a record in four calls and may flush between
  # them from another thread: a part ends only where a record does, and
  # a flush that has just closed one leaves no empty object behind.
  import struct
  def record(n):
    data = bytes([n % 256]) * n
    return [struct.pack("<Q", n), b"crc0", data, b"crc1"]
  # pylint: disable-next=protected-access
  events = summary._ObjectEvents(f"gs://{BUCKET}/events_split/e")
  a, b = record(500), record(100)
  for piece in a[:3]:
    events.write(piece)
  events.flush()  # 512 bytes but no whole record: the part stays open
  events.write(a[3])
  for piece in b[:2]:
    events.write(piece)
  events.flush()  # closes the first part after record a
  for piece in b[2:]:
    events.write(piece)
  events.close()
  events.close()
  events_dir = f"gs://{BUCKET}/events_split"
  assert sorted(paths.listdir(events_dir)) == ["e", "e.part00001"]
  assert paths.read_bytes(f"{events_dir}/e") == b"".join(a)
  assert paths.read_bytes(f"{events_dir}/e.part00001") == b"".join(b)
  one = f"gs://{BUCKET}/events_once/e"
  events = summary._ObjectEvents(one)  # pylint: disable=protected-access
  events.write(b"".join(a))
  events.flush()
  events.close()
  assert paths.listdir(f"gs://{BUCKET}/events_once") == ["e"]
  assert not _local_leftovers()


@pytest.mark.slow
def test_no_endpoint_and_no_credentials_are_one_line_errors_within_60s(gcs):
  import subprocess
  import sys
  # An endpoint nobody listens on, and real GCS with a credentials file
  # that does not exist: each stops with one line naming the bucket, at
  # once (test_real_gcs_..._refused_at_once below: the checks before the
  # clients' retries).
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
    if p is procs[0]:  # said at once, not after gcsfs's retries
      assert "nothing answers at http://127.0.0.1:9" in line, line
    else:
      assert "GOOGLE_APPLICATION_CREDENTIALS names /nonexistent/" in line, line
  assert not _local_leftovers()


def test_real_gcs_without_a_key_file_or_a_resolving_host_is_refused_at_once(
    monkeypatch):
  # Without these checks the GCS clients retry for half a minute, and the
  # run ends at check_reachable's deadline with a line that names neither
  # cause.
  import socket
  from ddpm_jax import paths
  import fsspec
  for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
               "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
               "no_proxy", "NO_PROXY"):
    monkeypatch.delenv(name, raising=False)
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(fsspec.config.conf, protocol, {})
  asked = []

  def resolve(host, port, *args, **kwargs):
    asked.append(host)
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", resolve)
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
  start = time.time()
  with pytest.raises(ConnectionError, match=(
      "^cannot reach gs://b: GOOGLE_APPLICATION_CREDENTIALS names "
      "/nonexistent/key.json, which is not a file")):
    paths.check_reachable("gs://b/run")
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
  with pytest.raises(ConnectionError, match=(
      "^cannot reach gs://b: the storage host storage.googleapis.com does "
      "not resolve")):
    paths.check_reachable("gs://b/run")
  assert asked == ["storage.googleapis.com"]
  assert time.time() - start < 5
  # Behind a proxy the name is the proxy's to resolve, and an endpoint
  # given to the clients is theirs: not checked here.
  monkeypatch.setattr(paths, "_check_emulator_listens", lambda root: None)
  monkeypatch.setattr(paths.epath, "Path", _Exists)
  monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
  paths.check_reachable("gs://b/run")
  monkeypatch.delenv("HTTPS_PROXY")
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "https://private.example")
  paths.check_reachable("gs://b/run")
  monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
  monkeypatch.setitem(fsspec.config.conf, "gs",
                      {"endpoint_url": "https://private.example"})
  paths.check_reachable("gs://b/run")
  assert asked == ["storage.googleapis.com"]
  # An emulator's endpoint is checked instead (test_no_endpoint_...).
  monkeypatch.setitem(fsspec.config.conf, "gs", {})
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
  paths.check_reachable("gs://b/run")
  assert asked == ["storage.googleapis.com"]


class _Exists:
  """A stand-in for epath.Path whose every path exists."""

  def __init__(self, path):
    self.path = path

  def exists(self):
    return True


def test_a_tfds_dataset_in_the_bucket_is_read_per_process(gcs,
                                                         prepared_tfds):
  from configs import digits as digits_config
  from ddpm_jax import data
  from tests.tfds_fakes import tiny_image_ids as ids
  from tests.tfds_fakes import tiny_images_stream
  url = f"gs://{BUCKET}/tfds_tiny"
  _upload(prepared_tfds, url)

  def stream(data_dir, index, count, position=None, n=6):
    return tiny_images_stream(data_dir, index, count, position, n,
                              random_flip=True)

  # 2 processes x 10 images, 2 per batch: in each epoch (5 batches) a
  # process reads its own 10 images once, exactly as it reads a local copy
  # of the dataset; the two parts are disjoint.
  (a, pa), (b, pb) = stream(url, 0, 2), stream(url, 1, 2)
  for index, got in enumerate((a, b)):
    local, _ = stream(prepared_tfds, index, 2)
    for x, y in zip(got, local):
      np.testing.assert_array_equal(x, y)
  assert pa == pb and pa[4] == data.Position(0, 20)
  assert pa[5] == data.Position(1, 4)
  parts = []
  for index, got in enumerate((a, b)):
    seen = sorted(i for x in got[:5] for i in ids(x))
    assert len(set(seen)) == 10
    parts += seen
  assert sorted(parts) == list(range(20))
  assert ids(a[5]) != ids(a[0])  # each epoch in its own order
  # A resume mid-epoch and at the epoch's end reads what the stream read.
  for k in (1, 4):
    got, _ = stream(url, 1, 2, position=pb[k], n=1)
    np.testing.assert_array_equal(got[0], b[k + 1])
  # The evaluation images, in stored order: those of the local copy.
  config = digits_config.get_config()
  config.data.name, config.data.channels = "ddpm_jax_tiny_images", 3
  config.data.data_dir = url
  ours = np.concatenate(list(data.eval_batches(config, "train", 8)))
  config.data.data_dir = prepared_tfds
  theirs = np.concatenate(list(data.eval_batches(config, "train", 8)))
  assert ours.shape == (20, 8, 8, 3)
  np.testing.assert_array_equal(ours, theirs)
  assert not _local_leftovers()


def _documented_pod_command():
  """The pod command of docs/training.md, as its words."""
  import shlex
  from tests.test_docs_commands import COMMANDS
  (line,) = [c for _, c in COMMANDS if "--multihost" in c and
             "gs://" in c and "train.py" in c.split()]
  return shlex.split(line)


@pytest.mark.slow
def test_the_documented_pod_command_preempted_and_resumed_in_the_bucket(
    gcs, tmp_path):
  # The pod command of docs/training.md as written (2 hosts x 2 devices,
  # CIFAR-10 read from the bucket by tfds, the workdir in the bucket), with
  # tiny settings after it. SIGTERM to the second host: both save the same
  # step in the bucket and exit. Three steps per jitted call
  # (steps_per_call 4, stopped short at each log): the hosts agree on a
  # call to stop before, not on a step (test_multihost.py runs one step per
  # call, on local digits). Resumed, the job ends exactly where the same
  # command run uninterrupted ends.
  import re
  import subprocess
  import sys
  from ddpm_jax import paths
  from tests.processes import free_port
  from tests.test_multihost import (assert_same_state, env, finish,
                                    signal_once_training, watch, saved_state)
  from tests.tfds_fakes import prepare_cifar10_stand_in

  # A stand-in for CIFAR-10 prepared in the bucket (`tfds build cifar10
  # --data_dir gs://...`).
  prepare_cifar10_stand_in(tmp_path)
  _upload(str(tmp_path), f"gs://{BUCKET}/tfds")
  documented = _documented_pod_command()
  assert documented[:4] == ["python", "train.py", "--config",
                            "configs/cifar10.py"]
  assert documented[-1] == "--process_id=i", documented
  tiny = [f"--config.data.data_dir=gs://{BUCKET}/tfds",
          "--config.data.download=False", "--config.data.image_size=8",
          "--config.model.ch=32", "--config.model.ch_mult=(1,)",
          "--config.model.num_res_blocks=1",
          "--config.model.attn_resolutions=(8,)",
          "--config.diffusion.num_timesteps=20",
          "--config.training.batch_size=8",
          "--config.training.checkpoint_every=100000",
          "--config.training.sample_every=0",
          "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
          "--config.optim.warmup_steps=2",
          "--config.training.steps_per_call=4",
          "--config.training.log_every=3"]

  def start(workdir, num_steps):
    """The documented command, with the bucket, host 0's address, N and i
    filled in; two processes."""
    port = free_port()
    fill = {"gs://bucket/cifar10": workdir,
            "--coordinator_address=host0:1234":
                f"--coordinator_address=localhost:{port}",
            "--num_processes=N": "--num_processes=2"}
    words = [fill.get(w, w) for w in documented]
    return [subprocess.Popen(
        [sys.executable] + words[1:-1] + [f"--process_id={i}"] + tiny
        + [f"--config.training.num_steps={num_steps}"],
        cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]

  pre = f"gs://{BUCKET}/cifar10"
  procs = start(pre, 100000)
  outputs = watch(procs)
  try:
    # Once the first call's steps are logged: both hosts are training,
    # process 0 alone holding the workdir's lock.
    deadline = time.time() + 300
    while not outputs[0].has("step 3: loss"):
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.5)
    holder = json.loads(paths.read_text(f"{pre}/train.lock"))
    assert holder["pid"] == procs[0].pid and "--process_id=0" in holder[
        "command"], holder
    signal_once_training(procs, outputs, "step 3: loss")
  finally:
    outs = finish(procs, outputs=outputs)
  assert not paths.exists(f"{pre}/train.lock")  # released at the end
  said = re.findall(r"preemption: saved the checkpoint of step (\d+)",
                    outs[0])
  assert said, outs[0][-2000:]
  step = int(said[0])
  assert paths.listdir(f"{pre}/checkpoints") == [str(step)]
  assert step % 3 == 0, step  # between calls
  assert step <= 60, step  # soon after the line (flushed at once)
  assert json.loads(paths.read_text(f"{pre}/config.json"))["data"][
      "name"] == "cifar10"
  # Resumed to step + 2 (one call of two steps), it ends exactly where an
  # uninterrupted job does.
  total = step + 2
  job = f"gs://{BUCKET}/cifar10_job"
  finish(start(job, total))
  finish(start(pre, total))
  assert paths.listdir(f"{job}/checkpoints") == [str(total)]
  assert_same_state(saved_state(job, total), saved_state(pre, total),
                    rel=1e-6)
  assert not _local_leftovers()


def test_a_workdir_lock_in_the_bucket_is_taken_once(gcs):
  # The lock object is written with the does-not-exist precondition: the
  # second taker is refused, naming the first; released, it is free again.
  from ddpm_jax import paths
  from ddpm_jax.run import workdir_lock
  wd = f"gs://{BUCKET}/locked"
  lock = workdir_lock.acquire(wd)
  assert paths.exists(f"{wd}/{workdir_lock.LOCK_FILE}")
  with pytest.raises(workdir_lock.WorkdirLocked,
                     match=f"pid {os.getpid()} on"):
    workdir_lock.acquire(wd)
  lock.release()
  assert not paths.exists(f"{wd}/{workdir_lock.LOCK_FILE}")
  workdir_lock.acquire(wd).release()
  assert not _local_leftovers()


_OUT = "out/checkpoints/"


def _train_until_committed(url, timeout_s):
  """train.py on the server at ``url`` (a workdir in BUCKET), with
  training.storage_timeout_s ``timeout_s``, once checkpoints 2 and 4 are
  committed (their folder's commit marker) and step 6 is logged: (the
  process, its :class:`processes.Output`, {object: crc32c} then)."""
  import subprocess
  import sys
  from tests import processes
  env = processes.unbuffered_off(dict(
      os.environ, TF_CPP_MIN_LOG_LEVEL="2", **gcs_emulator.client_env(url)))
  proc = subprocess.Popen(
      [sys.executable, "train.py", *TINY, "--workdir", f"gs://{BUCKET}/out",
       "--config.training.num_steps=100000",
       "--config.training.sample_every=0",
       f"--config.training.storage_timeout_s={timeout_s}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  output = processes.Output(proc)
  try:
    deadline = time.time() + 300
    while True:
      assert proc.poll() is None and time.time() < deadline, proc.poll()
      before = gcs_emulator.list_objects(url, BUCKET, _OUT)
      if output.has("step 6:") and f"{_OUT}4/commit_success.txt" in before:
        return proc, output, before
      time.sleep(0.5)
  except BaseException:
    proc.kill()
    raise


def _ended_after(fault, proc, output, timeout_s, then=None):
  """Runs ``fault()`` (the storage's), waits for ``proc`` to end (within
  ``timeout_s`` and 2 minutes), runs ``then()``: (its CompletedProcess,
  the seconds from the fault to its end)."""
  import subprocess
  try:
    fault()
    start = time.time()
    proc.wait(timeout=timeout_s + 120)
    took = time.time() - start
    if then is not None:
      then()
    out, err = output.finish()
  finally:
    if proc.poll() is None:
      proc.kill()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out,
                                     err), took


@pytest.mark.slow
def test_a_bucket_that_stops_answering_ends_the_run_in_one_line():
  """An outage that fails no request: the server hangs (SIGSTOP) after a
  few checkpoints. The storage clients would retry for many minutes with
  training blocked at the next save; the run ends once its pending save
  outlives training.storage_timeout_s, with one line, and the checkpoints
  written before the outage are left as they were. Its own server, so
  that the module's stays up."""
  url = gcs_emulator.reserve_url()
  timeout_s = 10
  prefix = _OUT
  with gcs_emulator.emulator(url, BUCKET):
    proc, output, before = _train_until_committed(url, timeout_s)
    p, took = _ended_after(lambda: gcs_emulator.freeze(url), proc, output,
                           timeout_s, then=lambda: gcs_emulator.thaw(url))
    line = error_line(p)
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"within {timeout_s} s (the storage did not answer" in line, line
    assert "run the same command to continue" in line, line
    assert took < timeout_s + 60, took  # not the clients' minutes of retries
    after = gcs_emulator.list_objects(url, BUCKET, prefix)
    committed = {n: c for n, c in before.items()
                 if n.split("/")[2] in ("2", "4")}
    assert committed and {n: after.get(n) for n in committed} == committed
    # Once the storage answers again, the same command goes on from the
    # last committed checkpoint, past the step whose save was cut off.
    p = run("train.py", *TINY, "--workdir", f"gs://{BUCKET}/out",
            "--config.training.num_steps=10",
            "--config.training.sample_every=0",
            env=gcs_emulator.client_env(url))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "at step 4" in p.stdout or "at step 6" in p.stdout, p.stdout[-2000:]
    done = gcs_emulator.list_objects(url, BUCKET, prefix)
    assert f"{prefix}10/commit_success.txt" in done, sorted(done)
    assert not [n for n in done if "tmp" in n.split("/")[2]], sorted(done)


@pytest.mark.slow
def test_a_bucket_server_that_goes_away_ends_the_run_in_one_line():
  """The server killed after a few checkpoints (connections refused): the
  clients' retries and their failures are not printed; the run ends with
  one line (the failed save's, or its deadline's) within the deadline and
  a minute."""
  url = gcs_emulator.reserve_url()
  timeout_s = 10
  with gcs_emulator.emulator(url, BUCKET):
    proc, output, _ = _train_until_committed(url, timeout_s)
    p, took = _ended_after(lambda: gcs_emulator.stop(url), proc, output,
                           timeout_s)
  line = error_line(p)
  err = p.stderr
  assert p.returncode == 1, err[-2000:]
  assert "could not be written" in line and "gs://" in line, line
  assert took < timeout_s + 60, took
  # No flood: besides the progress bar's redraws, a few lines at most.
  said = [s for s in err.splitlines() if s.strip() and "train:" not in s]
  assert len(said) <= 5, said
