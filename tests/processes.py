"""Running entry points in tests: several command lines of one entry point
in one process, and signals sent once the processes are ready."""

import json
import os
import pathlib
import subprocess
import sys
import time
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_in_one_process(entry, argvs, cwd=ROOT, timeout=900):
  """Runs each argv of ``argvs`` as ``python ENTRY ARGV`` would (ENTRY a
  script under the repository, or a ``ddpm_jax...`` module), one after
  another in one process (tests/scripts/run_commands.py), from ``cwd``.
  Returns one result per argv with ``argv``, ``returncode``, ``stdout``
  and ``stderr``, as subprocess.run gives them. absl logging is not in
  ``stderr``: check it with a real process."""
  cmd = [sys.executable, str(ROOT / "tests" / "scripts" / "run_commands.py")]
  cmd += ["-m", entry] if entry.startswith("ddpm_jax") else [entry]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  p = subprocess.run(cmd, input=json.dumps(argvs), cwd=cwd, env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-3000:]
  return [types.SimpleNamespace(argv=r["argv"], returncode=r["rc"],
                                stdout=r["stdout"], stderr=r["stderr"])
          for r in json.loads(p.stdout.strip().splitlines()[-1])]


def wait_then_signal(procs, ready, signum, target=-1, settle=0.0,
                     timeout=300):
  """Waits until ``ready()`` while every one of ``procs`` still runs (at
  most ``timeout`` seconds), waits ``settle`` seconds more, then sends
  ``signum`` to ``procs[target]``."""
  deadline = time.time() + timeout
  while not ready():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.5)
  time.sleep(settle)
  procs[target].send_signal(signum)
