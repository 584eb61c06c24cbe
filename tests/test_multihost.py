"""train.py as a real multi-host job: two processes joined by JAX's
distributed runtime (gloo collectives on CPU), two simulated devices each,
against one process with four devices. Each process loads only its rows of
the batch; SIGTERM on one host makes both save the same step and exit."""

import json
import os
import re
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
from kill_resume import flat, read_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import processes  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.processes import wait_then_signal  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = [
    "--config", "configs/digits.py", "--config.model.ch=32",
    "--config.model.num_res_blocks=1", "--config.diffusion.num_timesteps=20",
    # One resolution level (with attention): what is tested is the job's
    # distribution (process 0 compiles the job's programs and hands them
    # to process 1: tests/site/sitecustomize.py).
    "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=(8,)",
    "--config.model.num_groups=8",
    "--config.training.batch_size=8", "--config.training.log_every=1",
    "--config.sampling.num_samples=2", "--config.sampling.batch_size=2",
    "--config.optim.warmup_steps=2", "--config.training.max_to_keep=2",
    # See test_two_hosts_train_like_one...: Adam's eps large enough that
    # its update is a smooth function of near-zero gradient entries.
    "--config.optim.eps=1e-3",
]


def env(devices):
  """A job process's environment: ``devices`` simulated CPU devices, and
  stdout a pipe without PYTHONUNBUFFERED (:func:`signal_once_training`
  reads process 0's log lines as they are flushed)."""
  return processes.unbuffered_off(dict(
      os.environ, TF_CPP_MIN_LOG_LEVEL="2",
      XLA_FLAGS=processes.xla_flags(devices)))


def start_job(workdir, *args, host_options=None, entry=("train.py", *TINY)):
  """Two processes of one job (2 devices each) of ``entry`` (train.py on
  the tiny config) on ``workdir`` (None: no --workdir); Popen objects. ``host_options``: {process id: (extra
  environment, preexec_fn)}."""
  port = processes.free_port()
  procs = []
  for i in range(2):
    extra_env, preexec = (host_options or {}).get(i, ({}, None))
    procs.append(subprocess.Popen(
        [sys.executable, *entry, *args,
         *(["--workdir", workdir] if workdir else []),
         "--multihost", f"--coordinator_address=localhost:{port}",
         "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=dict(env(2), **extra_env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=preexec))
  return procs


def finish(procs, timeout=600, outputs=None):
  """Waits for the job's processes; their stdout + stderr, once each has
  exited 0. ``outputs``: the processes' :class:`processes.Output`, where a
  test reads their lines while they run (:func:`watch`)."""
  outs = []
  try:
    for i, p in enumerate(procs):
      if outputs is None:
        out, err = p.communicate(timeout=timeout)
      else:
        p.wait(timeout=timeout)
        out, err = outputs[i].finish()
      outs.append(out + err)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  return outs


def watch(procs):
  """A :class:`processes.Output` per process of a job, collecting its lines
  while it runs."""
  return [processes.Output(p) for p in procs]


def signal_once_training(procs, outputs, line):
  """SIGTERM to the job's second host once process 0 has printed ``line``
  (a step's log line: the hosts are inside the training loop, past every
  start-up step), rather than at a time guessed after the start."""
  wait_then_signal(procs, lambda: outputs[0].has(line), signal.SIGTERM,
                   target=1)


def saved_state(workdir, step):
  return flat(read_state(os.path.join(workdir, "checkpoints", str(step),
                                      "state")))


def assert_same_state(a, b, rel):
  """Integer leaves (step, rng, counts) equal; each float array within
  ``rel`` of its own scale (+1e-8 absolute)."""
  assert a.keys() == b.keys()
  for k in a:
    if a[k].dtype.kind == "f":
      scale = float(np.max(np.abs(a[k])))
      diff = float(np.max(np.abs(b[k].astype(np.float64) - a[k])))
      assert diff <= rel * scale + 1e-8, (k, diff, scale)
    else:
      np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def assert_same_losses(ref, job):
  from tests.test_train_cli import read_scalars
  a = read_scalars(os.path.join(ref, "tensorboard"))["train/loss"]
  b = read_scalars(os.path.join(job, "tensorboard"))["train/loss"]
  steps = sorted(set(a) & set(b))
  assert steps
  np.testing.assert_allclose([b[s] for s in steps], [a[s] for s in steps],
                             rtol=1e-5)


@pytest.mark.slow
def test_two_hosts_train_like_one_and_stop_together_on_sigterm(tmp_path):
  # 1. SIGTERM to the second host only, mid-run: both agree on a step,
  # save it and exit 0.
  pre = str(tmp_path / "preempted")
  procs = start_job(pre, "--config.training.num_steps=100000",
                    "--config.training.checkpoint_every=100000",
                    "--config.training.sample_every=0")
  outputs = watch(procs)
  try:
    signal_once_training(procs, outputs, "step 1: loss")
  finally:
    outs = finish(procs, outputs=outputs)
  said = re.findall(r"preemption: saved the checkpoint of step (\d+)",
                    outs[0])
  assert said, outs[0][-2000:]  # process 0 reports it
  step = int(said[0])
  # Soon after step 1's log line: a log flushed line by line (a block
  # buffer would hold about 100 lines back).
  assert 0 < step <= 50, step
  assert os.listdir(os.path.join(pre, "checkpoints")) == [str(step)]
  total = step + 2

  # 2. An uninterrupted job of `total` steps on 2 hosts x 2 devices against
  # 1 host x 4 devices: the same program on the same mesh shape, but the
  # cross-process sums go through gloo in another order, so gradients
  # differ by rounding. The per-step losses agree to 1e-5. The parameters
  # are held to 2e-4 of each array's scale (measured: 6.6e-5 after 4
  # steps, in biases whose gradient is a sum with heavy cancellation); a
  # wrong batch or a missing gradient all-reduce moves the zero-initialised
  # arrays by O(1) of their scale. With Adam's default eps=1e-8, rounding
  # noise in near-zero gradient entries becomes +-lr updates whose sign is
  # chance (test_parallel.py explains it), so the config raises eps to
  # 1e-3; test_parallel.py holds the sharded step itself to 1e-5
  # elementwise under SGD.
  # The job also evaluates at its last step over both hosts' devices
  # bits/dim (10 images in batches of 6 and 4, the 6 padded to 8 over 4
  # devices) and the digits score of 10 samples (the config's seed and
  # sampling batch, as `score` below draws them).
  job, ref = str(tmp_path / "job"), str(tmp_path / "ref")
  bpd_options = ["--num=10", "--batch_size=6"]
  trained_outs = finish(start_job(
      job, f"--config.training.num_steps={total}",
      "--config.training.checkpoint_every=2",
      f"--config.training.eval_every={total}",
      "--config.training.eval_examples=10",
      "--config.training.eval_batch_size=6",
      f"--config.training.quality_every={total}",
      "--config.training.quality_samples=10"))
  # The 1-host run, and the evaluation and sampling below: one 4-device
  # process.
  sample = ["--workdir", job, "--num=10", "--batch_size=6", "--seed=3"]
  score = ["--workdir", job, "--metric=digits", "--num=10",
           "--batch_size=2", "--seed=0"]
  [[trained], [evaluated, scored],
   [sampled]] = processes.run_entries_in_one_process([
      ("train.py", [[*TINY, f"--config.training.num_steps={total}",
                     "--config.training.checkpoint_every=2", "--workdir",
                     ref]]),
      ("evaluate.py", [["--workdir", job, *bpd_options], [*score]]),
      ("sample.py", [[*sample, "--out", str(tmp_path / "alone")]])],
      env=env(4))
  assert trained.returncode == 0, trained.stderr[-3000:]
  # sample.py over both hosts: the images one process draws with the same
  # mesh shape, bit for bit; process 0 alone writes (and says so).
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  both = str(tmp_path / "both")
  outs = finish(start_job(job, *sample[2:], "--out", both,
                          entry=("sample.py",)))
  assert f"wrote {both}.png" in outs[0] and "wrote" not in outs[1], outs
  np.testing.assert_array_equal(np.load(both + ".npz")["images"],
                                np.load(tmp_path / "alone.npz")["images"])
  assert sorted(n for n in os.listdir(tmp_path) if n.startswith("both")) == [
      "both.json", "both.npz", "both.png"]
  # evaluate.py over both hosts, the digits score and bits/dim: each
  # process computes the judge's features of its half of the samples, and
  # the bound of the rows of each batch its devices hold (batch 1: rows
  # 1-4 of 8 on process 0, 5-6 and the padding on process 1; batch 2: 2
  # and 2); the results are the one process's. (The same features, up to
  # the rounding of the judge's batch of 5 rows against one of 10; the
  # bound's batch sums add the devices' parts through gloo in another
  # order.)
  assert scored.returncode == 0, scored.stderr[-3000:]
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  scored_alone = json.loads(scored.stdout.strip().splitlines()[-1])
  evaluated_alone = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert evaluated_alone["num_examples"] == 10
  for args, alone, shares, rtol in (
      (score[2:], scored_alone, ("digits-judge features of rows 1-5 of 10",
                                 "digits-judge features of rows 6-10 of 10"),
       1e-6),
      (bpd_options, evaluated_alone, ("bits/dim of 6 of 10 examples",
                                      "bits/dim of 4 of 10 examples"),
       1e-5)):
    outs = finish(start_job(job, *args, entry=("evaluate.py",)))
    for i, share in enumerate(shares):
      assert f"process {i}: {share}" in outs[i], outs[i][-2000:]
    said = [[line for line in out.splitlines() if line.startswith("{")]
            for out in outs]
    assert len(said[0]) == 1 and not said[1], said  # process 0 alone
    over_both = json.loads(said[0][0])
    assert over_both.keys() == alone.keys()
    for key, value in alone.items():
      if isinstance(value, (str, type(None))):
        assert over_both[key] == value, key
      else:
        np.testing.assert_allclose(over_both[key], value, rtol=rtol,
                                   err_msg=key)
  assert_same_state(saved_state(ref, total), saved_state(job, total),
                    rel=2e-4)
  assert_same_losses(ref, job)
  # The evaluations in training, over both hosts, each process its share:
  # the bound and the digits score of the same EMA params evaluated by one
  # process.
  for i, shares in enumerate((("bits/dim of 6 of 10 examples",
                               "digits-judge features of rows 1-5 of 10"),
                              ("bits/dim of 4 of 10 examples",
                               "digits-judge features of rows 6-10 of 10"))):
    for share in shares:
      assert f"process {i}: {share}" in trained_outs[i], (
          trained_outs[i][-2000:])
  from tests.test_train_cli import read_scalars
  logged = read_scalars(os.path.join(job, "tensorboard"))
  assert logged["eval/num_examples"][total] == 10
  for part in ("total", "prior", "decoder", "kl"):
    np.testing.assert_allclose(logged[f"eval/bpd_{part}"][total],
                               evaluated_alone[part], rtol=1e-5,
                               err_msg=part)
  for key in ("digits_fid", "confidence", "digits_is"):
    np.testing.assert_allclose(logged[f"eval/{key}"][total],
                               scored_alone[key], rtol=1e-6, err_msg=key)
  # Process 0 alone wrote the sample grid.
  assert sorted(os.listdir(os.path.join(job, "samples"))) == [
      f"step_{total:08d}.npz", f"step_{total:08d}.png"]

  # 3. The preempted job's command, run again to `total`, ends where the
  # uninterrupted job of part 2 ends, exactly (same processes, same
  # reduction order; its checkpoint, eval and sample settings do not touch
  # the training state).
  finish(start_job(pre, f"--config.training.num_steps={total}",
                   "--config.training.checkpoint_every=100000",
                   "--config.training.sample_every=0"))
  assert_same_state(saved_state(job, total), saved_state(pre, total),
                    rel=1e-6)


@pytest.mark.slow
def test_fid_reference_statistics_are_shared_over_hosts(tmp_path):
  # The statistics of the digits test split (297 images in batches of 100;
  # the Inception replaced by the pixels, see the script): alone, then over
  # 2 processes where host 1 already has them cached and host 0 does not.
  # Both must then compute them, each its block of each batch (50+50+49
  # rows and 50+50+48), or host 0 would wait for host 1 at the gather.
  script = ("-m", "tests.scripts.shared_statistics")
  alone, both = tmp_path / "alone", tmp_path / "both"
  subprocess.run([sys.executable, *script, f"--out_dir={alone}"], cwd=ROOT,
                 env=env(2), check=True, timeout=300)
  expected = np.load(alone / "process_0.npz")
  (both / "cache_1").mkdir(parents=True)
  for name in os.listdir(alone / "cache_0"):
    os.link(alone / "cache_0" / name, both / "cache_1" / name)
  outs = finish(start_job(None, f"--out_dir={both}", entry=script),
                timeout=300)
  for i, share in enumerate(("149", "148")):
    said = re.findall(r"process \d: Inception features of .*", outs[i])
    assert said == [f"process {i}: Inception features of {share} of 297 "
                    f"images of test"], outs[i][-2000:]
    # Bit for bit the one process's; the second call reads the caches.
    got = np.load(both / f"process_{i}.npz")
    for key in ("mu", "sigma"):
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
      np.testing.assert_array_equal(got[key + "_again"], expected[key],
                                    err_msg=key)
  assert os.listdir(both / "cache_0") == os.listdir(alone / "cache_0")


def _limit_file_size(limit_bytes):
  def limit():  # in the child before exec: EFBIG past the limit, no signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
  return limit


@pytest.mark.slow
def test_a_save_failing_on_one_host_stops_every_host_in_one_line(tmp_path):
  # Host 1 cannot write a file past 100 kB (as a full disk of its own
  # would fail it). Orbax's processes then wait on each other's parts of
  # the save at its barriers; neither may hang: each stops with one line
  # naming checkpoint 4, once the failure is seen or at the latest when
  # training.storage_timeout_s runs out. (Host 0 does not see host 1's
  # failure at once: with a limit of 20 s the test took 25-30 s alone,
  # with 10 s or 5 s 11-12 s.)
  wd = str(tmp_path / "run")
  timeout_s = 10
  # Host 1 writes no compile-cache entry: one cut at the limit would stay
  # in the cache.
  procs = start_job(
      wd, "--config.training.num_steps=40",
      "--config.training.checkpoint_every=4",
      "--config.training.sample_every=0",
      f"--config.training.storage_timeout_s={timeout_s}",
      host_options={1: ({"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"},
                        _limit_file_size(100_000))})
  try:
    errs = [p.communicate(timeout=600)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 1, err[-3000:]
    last = processes.error_line(subprocess.CompletedProcess(p.args, 1, "",
                                                            err))
    assert last.startswith(f"error: checkpoint 4 could not be written to "
                           f"{wd}/checkpoints/4"), last
  # Nothing was committed: no later step was saved over the failure.
  assert not [n for n in os.listdir(os.path.join(wd, "checkpoints"))
              if n.isdigit()]
