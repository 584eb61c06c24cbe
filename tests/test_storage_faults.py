"""Storage that fails under a running job: a checkpoint or an event write
that cannot complete (a full disk, here a file-size limit, which fails the
same writes with EFBIG) stops the run with one line naming the path and the
cause, removes the partial save and leaves every older checkpoint as it
was."""

import hashlib
import os
import resource
import signal
import subprocess
import sys

import pytest

from tests.processes import ROOT
from tests.test_train_cli import TINY, error_line, run

# Above every file but the checkpoints' data files (several 100 kB each).
LIMIT_BYTES = 100_000
# A process under a file-size limit reads the suite's compile cache but
# does not write it: an entry cut at the limit would stay in the cache,
# damaged, for every later test.
NO_CACHE_WRITES = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def _limit_file_size():
  # In the child before exec: EFBIG on a write past the limit, not SIGXFSZ.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def _tree_digest(folder):
  h = hashlib.sha256()
  for top, dirs, files in sorted(os.walk(folder)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(top, name)
      h.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


@pytest.mark.slow
def test_a_failed_save_stops_the_run_in_one_line_and_keeps_the_others(
    tmp_path):
  wd = str(tmp_path / "run")
  common = [*TINY, "--workdir", wd, "--config.training.max_to_keep=2",
            "--config.training.sample_every=0"]
  p = run("train.py", *common, "--config.training.num_steps=4")
  assert p.returncode == 0, p.stderr[-3000:]
  ckpts = os.path.join(wd, "checkpoints")
  before = {s: _tree_digest(os.path.join(ckpts, s)) for s in ("2", "4")}
  assert sorted(os.listdir(ckpts)) == ["2", "4"]

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **NO_CACHE_WRITES)
  p = subprocess.run([sys.executable, "train.py", *common,
                      "--config.training.num_steps=12"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600,
                     preexec_fn=_limit_file_size)
  line = error_line(p)
  where = os.path.join(ckpts, "6")
  assert line.startswith(f"error: checkpoint 6 could not be written to "
                         f"{where} (File too large"), line
  # Known once the save has failed, at the latest when the next one (step
  # 8) would start; the last good checkpoint is named.
  stopped = int(line.split("training stopped at step ")[1].split(",")[0])
  assert 6 <= stopped <= 8, line
  assert "the last checkpoint is step 4" in line, line
  # No partial save left, and the older checkpoints untouched (with
  # max_to_keep=2, a failed save must not rotate step 2 out).
  assert sorted(os.listdir(ckpts)) == ["2", "4"]
  assert {s: _tree_digest(os.path.join(ckpts, s)) for s in before} == before
  # Orbax's logged tracebacks are not printed.
  assert "RESOURCE_EXHAUSTED" not in p.stderr, p.stderr[-3000:]


_WRITE_EVENTS_PAST_A_LIMIT = """
import resource, signal, sys
from ddpm_jax.run import summary
writer = summary.summary_writer(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
  for step in range(5000):
    writer.add_scalar("train/loss", 1.0 / (step + 1), step)
  writer.flush()
except OSError as e:
  print("refused:", type(e).__name__, e)
"""


def test_a_failed_event_write_is_one_storage_error(tmp_path):
  # tensorboardX's own writer fails in its thread and blocks once its
  # queue fills; this one raises where the loop can stop in one line.
  p = subprocess.run([sys.executable, "-c", _WRITE_EVENTS_PAST_A_LIMIT,
                      str(tmp_path)], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "Traceback" not in p.stderr, p.stderr[-2000:]
  events = os.path.join(str(tmp_path), "tensorboard", "events.out.tfevents.")
  assert (f"refused: StorageError could not write TensorBoard events to "
          f"{events}") in p.stdout, p.stdout
  assert "(File too large (errno 27))" in p.stdout, p.stdout


def _no_file_bytes():
  # A disk with no room left: not a byte can be written.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.slow
def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
  from tests.processes import run_entries_in_one_process
  wd = str(tmp_path / "run")
  a_file = str(tmp_path / "a_file")
  with open(a_file, "w") as f:
    f.write("not a folder")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **NO_CACHE_WRITES)

  def refusal(p):
    line = error_line(p)
    assert "sampling" not in p.stderr and "train:" not in p.stderr, line
    return line

  def refused(script, *args):
    """A refusal under a file-size limit of 0 (a process of its own)."""
    return refusal(subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
        preexec_fn=_no_file_bytes))

  # A trained workdir, then a workdir or an --out whose parent is a file,
  # and a batch whose activations no memory holds (refused before any
  # array): in one process (tests/processes.py).
  [[p, file_workdir], [file_out, too_big],
   [too_big_to_evaluate]] = run_entries_in_one_process([
      ("train.py", [[*TINY, "--workdir", wd, "--config.training.num_steps=2"],
                    [*TINY, "--workdir", a_file]]),
      ("sample.py", [["--workdir", wd, "--out", os.path.join(a_file, "x")],
                     ["--workdir", wd, "--num", "100000000", "--batch_size",
                      "100000000"]]),
      ("evaluate.py", [["--workdir", wd, "--metric", "digits", "--num",
                        "100000000", "--batch_size", "100000000"]])])
  assert p.returncode == 0, p.stderr[-3000:]
  assert refusal(file_workdir) == (
      f"error: {a_file} is a file, not a folder: give --workdir a path "
      f"under a folder")
  assert refusal(file_out) == (
      f"error: {a_file} is a file, not a folder: give --out a "
      f"path under a folder")
  for p in (too_big, too_big_to_evaluate):
    line = refusal(p)
    assert line.startswith("error: a batch of 100000000 at 8x8 needs at "
                           "least "), line
    assert line.endswith("lower --batch_size, or pass --nomemory_check to "
                         "try anyway"), line
  # A full disk: refused before the model is loaded or a sample drawn.
  samples = os.path.join(wd, "samples")
  before = sorted(os.listdir(samples))
  assert refused("sample.py", "--workdir", wd, "--num", "4") == (
      f"error: cannot write in {samples}: give --out a "
      f"writable folder (File too large (errno 27))")
  new = str(tmp_path / "new" / "run")
  assert refused("train.py", *TINY, "--workdir", new) == (
      f"error: cannot write in {tmp_path}: give --workdir a writable folder "
      f"(File too large (errno 27))")
  # Nothing was written or created.
  assert sorted(os.listdir(samples)) == before
  assert not os.path.exists(str(tmp_path / "new"))


def test_the_memory_check_can_be_skipped():
  from ddpm_jax.run import sampling
  from tests.tiny_configs import tiny_config
  with pytest.raises(ValueError, match="--nomemory_check"):
    sampling.check_batch_memory(tiny_config(), 10**9, memory_check=True)
  sampling.check_batch_memory(tiny_config(), 10**9, memory_check=False)
  sampling.check_batch_memory(tiny_config(), 64, memory_check=True)


def test_evaluate_checks_the_largest_batch_it_runs():
  from ddpm_jax.run import evaluate
  assert evaluate.largest_batch("digits", 0, 10**6) == 297
  assert evaluate.largest_batch("fid", 0, 10**6) == 50000
  assert evaluate.largest_batch("fid", 100, 64) == 64
  assert evaluate.largest_batch("bpd", 10, 64) == 10
  assert evaluate.largest_batch("bpd", 0, 10**6) == 10**6


def test_a_write_past_its_deadline_ends_with_its_line():
  import threading
  import time
  from ddpm_jax import write_deadlines
  fired, done = [], threading.Event()

  def expire(line):
    fired.append(line)
    done.set()

  deadlines = write_deadlines.Deadlines(0.3, expire=expire)
  with deadlines.guard("in time", lambda: "in time is late"):
    pass
  deadlines.arm("finished", lambda: "finished is late")
  deadlines.disarm("finished")
  start = time.monotonic()
  deadlines.arm("hung", lambda: "hung is late")
  assert done.wait(10)
  assert fired == ["hung is late"]
  assert 0.3 <= time.monotonic() - start < 5
  # No limit: nothing is watched.
  never = write_deadlines.Deadlines(0, expire=expire)
  never.arm("hung", lambda: "never")
  time.sleep(0.5)
  assert fired == ["hung is late"]


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, capsys):
  # The FID statistics and the digits judge are computed before they are
  # cached: a cache folder that cannot be written must not lose them.
  import numpy as np
  from ddpm_jax import paths
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  where = str(blocker / "cache" / "stats.npz")
  assert not paths.save_cache_npz(where, "the statistics", mu=np.zeros(3))
  err = capsys.readouterr().err
  assert err.startswith(f"warning: the statistics not cached at {where} ("), err
  assert len(err.strip().splitlines()) == 1, err
  ok = str(tmp_path / "cache" / "stats.npz")
  assert paths.save_cache_npz(ok, "the statistics", mu=np.ones(3))
  np.testing.assert_array_equal(paths.load_npz(ok)["mu"], np.ones(3))


def test_a_write_failing_in_a_save_thread_stops_at_the_next_step(
    tmp_path, capsys):
  # Orbax reports a write that failed in its save thread by logging it
  # (with its traceback); the save may still be in progress. The next step
  # boundary (Saves.check, without waiting) stops the run in one line, and
  # the logged traceback never reaches the console.
  import logging
  import jax.numpy as jnp
  from ddpm_jax import checkpoint_saves, checkpoints
  manager = checkpoints.checkpoint_manager(str(tmp_path / "run"))
  saves = checkpoint_saves.Saves(manager)
  saves.save(1, {"w": jnp.ones(3)}, {"epoch": 0, "offset": 1})
  manager.wait_until_finished()
  saves.check()  # confirmed: nothing failed
  saves.save(2, {"w": jnp.ones(3)}, {"epoch": 0, "offset": 2})
  manager.wait_until_finished()
  manager.is_saving_in_progress = lambda: True  # as if still writing
  saves.check()  # unconfirmed, nothing failed: training goes on
  try:
    raise OSError(28, "No space left on device")
  except OSError:
    record = logging.LogRecord(
        "absl", logging.ERROR,
        "/x/orbax/checkpoint/_src/serialization/tensorstore_utils.py", 1,
        "write failed", None, sys.exc_info())
  logging.getLogger("absl").handle(record)
  with pytest.raises(checkpoint_saves.SaveError) as e:
    saves.check()
  assert str(e.value).startswith(
      f"checkpoint 2 could not be written to {tmp_path}/run/checkpoints/2 "
      f"(No space left on device"), str(e.value)
  assert "write failed" not in capsys.readouterr().err
  del manager.is_saving_in_progress
  manager.close()
