"""Running entry points in tests: several command lines of one entry point
in one process, and signals sent once the processes are ready."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent

# XLA's CPU backend without LLVM's optimizations (level 0; the default is
# 2): the suite's programs compile in half the time and run at half the
# speed, which these tiny programs do not notice. The results differ from
# the default build's by float32 rounding, as another CPU model's would (no
# fused multiply-adds); tests/test_golden.py checks the default build's
# bits, and the few tests whose time is the running (training for an
# outcome, the Inception network, the documented commands' 1000-step
# samplers) run at the default level, in a process of their own
# (call_at_default_level, run_entries_in_one_process's default_level).
# tests/conftest.py adds this to XLA_FLAGS; docs/testing.md has the
# measurements.
OPT_FLAG = "--xla_backend_optimization_level=0"


def free_port():
  """A TCP port of localhost that nothing listens on now (a job's
  coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def xla_flags(devices):
  """XLA_FLAGS for a test's process with ``devices`` simulated CPU devices,
  at the suite's compile optimization level (:data:`OPT_FLAG`)."""
  return f"{OPT_FLAG} --xla_force_host_platform_device_count={devices}"


def call_at_default_level(module, function, *args, timeout=1200):
  """``module.function(*args)`` (string arguments) in a new process whose
  XLA_FLAGS are the suite's without :data:`OPT_FLAG`: compiled at XLA's
  default level, as users run. Returns the function's JSON-able result."""
  flags = os.environ.get("XLA_FLAGS", "").replace(OPT_FLAG, "").strip()
  code = ("import importlib, json, sys; "
          "m = importlib.import_module(sys.argv[1]); "
          "print(json.dumps(getattr(m, sys.argv[2])(*sys.argv[3:])))")
  p = subprocess.run([sys.executable, "-c", code, module, function, *args],
                     cwd=ROOT, env=dict(os.environ, XLA_FLAGS=flags),
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def run_in_one_process(entry, argvs, cwd=ROOT, timeout=900):
  """Runs each argv of ``argvs`` as ``python ENTRY ARGV`` would (ENTRY a
  script under the repository, or a ``ddpm_jax...`` module), one after
  another in one process (tests/scripts/run_commands.py), from ``cwd``.
  Returns one result per argv with ``argv``, ``returncode``, ``stdout``
  and ``stderr`` (absl's log lines included), as subprocess.run gives
  them."""
  return run_entries_in_one_process([(entry, argvs)], cwd, timeout)[0]


def run_entries_in_one_process(groups, cwd=ROOT, timeout=900,
                               default_level=False, env=None):
  """:func:`run_in_one_process` for several entry points in turn:
  ``groups`` is a list of (ENTRY, argvs); returns a list of results per
  group. ``default_level``: compiled at XLA's default level (without
  :data:`OPT_FLAG`), for commands whose running outweighs their compiling
  (the documented commands' 1000-step samplers). ``env``: the process's
  environment, if not this one's."""
  cmd = [sys.executable, str(ROOT / "tests" / "scripts" / "run_commands.py"),
         "--entries"]
  pairs = [("-m " + entry if entry.startswith("ddpm_jax") else entry,
            list(argvs)) for entry, argvs in groups]
  env = dict(env if env is not None else os.environ,
             TF_CPP_MIN_LOG_LEVEL="2")
  if default_level:
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(OPT_FLAG, "").strip()
  p = subprocess.run(cmd, input=json.dumps(pairs), cwd=cwd, env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-3000:]
  results = [types.SimpleNamespace(argv=r["argv"], returncode=r["rc"],
                                   stdout=r["stdout"], stderr=r["stderr"])
             for r in json.loads(p.stdout.strip().splitlines()[-1])]
  out = []
  for _, argvs in pairs:
    out.append(results[:len(argvs)])
    results = results[len(argvs):]
  return out


def wait_then_signal(procs, ready, signum, target=-1, timeout=300):
  """Waits until ``ready()`` while every one of ``procs`` still runs (at
  most ``timeout`` seconds), then sends ``signum`` to ``procs[target]``."""
  deadline = time.time() + timeout
  while not ready():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.5)
  procs[target].send_signal(signum)


class Output:
  """Collects a process's stdout and stderr (text pipes) in threads, so a
  test can wait for a line the process prints while it runs."""

  def __init__(self, proc):
    self._parts = {"stdout": [], "stderr": []}
    self._threads = [threading.Thread(target=self._read, args=(pipe, name),
                                      daemon=True)
                     for name, pipe in (("stdout", proc.stdout),
                                        ("stderr", proc.stderr))]
    for t in self._threads:
      t.start()

  def _read(self, pipe, name):
    for line in iter(pipe.readline, ""):
      self._parts[name].append(line)

  def has(self, text):
    """Whether ``text`` has appeared on stdout or stderr so far."""
    return any(text in line for lines in self._parts.values()
               for line in list(lines))

  def finish(self, timeout=60):
    """(stdout, stderr) once the process has closed both (called after it
    exited: a pipe still open ``timeout`` seconds later is held by a
    process it left behind, which fails the test instead of hanging it)."""
    for t in self._threads:
      t.join(timeout)
      assert not t.is_alive(), "a process left behind holds the output pipe"
    return "".join(self._parts["stdout"]), "".join(self._parts["stderr"])


def unbuffered_off(env):
  """``env`` without PYTHONUNBUFFERED (a developer's shell may set it)."""
  env.pop("PYTHONUNBUFFERED", None)
  return env


def run_until_signalled(args, ready, signum, env=None, timeout=300):
  """Starts ``python ARGS`` in the repository, sends ``signum`` once
  ``ready(output)`` holds (output: an :class:`Output` of the process) and
  waits for it to end: (return code, stdout, stderr). The process is
  killed if the test fails first. Its stdout is a pipe without
  PYTHONUNBUFFERED, as a log collector reads a job: ``ready`` sees a line
  only once the process flushes it."""
  proc = subprocess.Popen(
      [sys.executable, *args], cwd=ROOT,
      env=unbuffered_off(dict(env if env is not None else os.environ,
                              TF_CPP_MIN_LOG_LEVEL="2")),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  output = Output(proc)
  try:
    wait_then_signal([proc], lambda: ready(output), signum,
                     timeout=timeout)
    proc.wait(timeout=timeout)
    out, err = output.finish()
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out, err


def error_line(proc):
  """The refusal of a finished process: it failed, and the only line of
  its stderr besides progress bars and 'warning: ' lines is the last,
  'error: ...'."""
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: "), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  said = [line for line in lines[:-1] if line.strip() and not (
      line.startswith("warning: ") or "\r" in line or "it/s]" in line or
      "batch/s]" in line or "%|" in line)]
  assert not said, proc.stderr[-2000:]
  return lines[-1]
