"""One training run per workdir (ddpm_jax.run.workdir_lock): a second run
refuses in one line naming the holder; a lock left by a dead process on
this host is taken over; --force_unlock takes over any lock."""

import json
import os
import socket
import subprocess
import sys

import pytest

from ddpm_jax.run import workdir_lock
from tests.processes import ROOT


def dead_pid():
  """The pid of a process that has just exited."""
  p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                     capture_output=True, text=True, check=True)
  return int(p.stdout)


def forge(workdir, **holder):
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(
      dict({"host": socket.gethostname(), "pid": os.getpid(),
            "started": "2026-12-06 10:00:00 UTC"}, **holder)))


def test_the_second_taker_is_refused_naming_the_holder(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path))
  holder = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert holder["pid"] == os.getpid()
  assert holder["host"] == socket.gethostname()
  with pytest.raises(workdir_lock.WorkdirLocked) as e:
    workdir_lock.acquire(str(tmp_path))
  line = str(e.value)
  assert "\n" not in line and f"pid {os.getpid()} on" in line, line
  assert "--force_unlock" in line
  lock.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  workdir_lock.acquire(str(tmp_path)).release()  # free again


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, capsys):
  pid = dead_pid()
  forge(tmp_path, pid=pid)
  lock = workdir_lock.acquire(str(tmp_path))
  assert f"from pid {pid} on" in capsys.readouterr().err
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())[
      "pid"] == os.getpid()
  lock.release()


def test_another_hosts_lock_needs_force_unlock(tmp_path, capsys):
  forge(tmp_path, host="tpu-host-7", pid=dead_pid())
  with pytest.raises(workdir_lock.WorkdirLocked, match="on tpu-host-7"):
    workdir_lock.acquire(str(tmp_path))
  lock = workdir_lock.acquire(str(tmp_path), force=True)
  assert "(--force_unlock)" in capsys.readouterr().err
  lock.release()


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path))
  forge(tmp_path, host="elsewhere")  # taken over with --force_unlock
  lock.release()
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()


@pytest.mark.slow
def test_two_train_runs_on_one_workdir(tmp_path):
  # The second train.py refuses at once, in one line naming the first;
  # the first trains on and, stopped, leaves the workdir unlocked.
  import signal
  import time
  from tests.processes import Output
  from tests.test_train_cli import TINY, error_line, run
  wd = str(tmp_path / "run")
  first = subprocess.Popen(
      [sys.executable, "train.py", *TINY, "--workdir", wd,
       "--config.training.num_steps=100000",
       "--config.training.checkpoint_every=100000"], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  output = Output(first)
  try:
    deadline = time.time() + 300
    while not output.has("step 2: loss"):  # the first is training
      assert first.poll() is None and time.time() < deadline
      time.sleep(0.5)
    line = error_line(run("train.py", *TINY, "--workdir", wd,
                          "--config.training.num_steps=3"))
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=300)
    output.finish()
  finally:
    if first.poll() is None:
      first.kill()
  assert f"is being trained by pid {first.pid} on" in line, line
  assert first.returncode == 0
  assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_FILE))
