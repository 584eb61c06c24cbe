"""train.py killed with SIGKILL at random moments and restarted ends where
an uninterrupted run ends (tests/scripts/kill_resume.py; run it with
--kills 20 for the long version).

Here with up to four steps per jitted call (training.steps_per_call; the
program test_train_cli.py's SIGTERM test compiles too) and a checkpoint
every three steps, so that each call stops short at a checkpoint (three
of its four steps) and kills land inside calls; tests/test_bucket.py runs
the same script with one step per call and a checkpoint every step, and
tests/test_steps_per_call.py resumes after calls of other lengths."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sigkill_and_restart_matches_uninterrupted_run(tmp_path):
  p = subprocess.run([sys.executable, "tests/scripts/kill_resume.py",
                      "--kills", "3", "--steps", "12", "--seed", "1",
                      "--steps_per_call", "4", "--checkpoint_every", "3",
                      "--workdir",
                      str(tmp_path)], cwd=ROOT, capture_output=True,
                     text=True, timeout=1200)
  assert p.stdout.strip(), p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert p.returncode == 0, (result, p.stderr[-3000:])
  assert result["kills"] == 3, result
  assert result["max_abs_diff"] <= 1e-6 and result["int_leaves_equal"]
