"""Waiting on running entry points in tests: signal them once they are
ready."""

import time


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
