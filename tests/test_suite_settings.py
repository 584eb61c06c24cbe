"""The settings tests/conftest.py gives the test workers and, through
tests/site/sitecustomize.py, every Python process the tests start."""

import gc
import os
import subprocess
import sys

import pytest

from tests import conftest, processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_process_collects_garbage_at_the_suites_thresholds():
  expected = tuple(int(v) for v in conftest.GC_THRESHOLDS.split(","))
  assert expected != (700, 10, 10)  # Python's default
  assert gc.get_threshold() == expected
  out = subprocess.run(
      [sys.executable, "-c", "import gc; print(gc.get_threshold())"],
      cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
  assert out.stdout.strip() == str(expected), out


# Two processes of one job, two CPU devices each: a program over the four
# devices; its cache key as each process computes it, how often each
# compiled it and how often it got it without compiling (received from the
# other process, or read from the cache the other wrote).
_JOB = """
import sys
import jax
import numpy as np
from jax import monitoring
from jax._src import compiler
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
keys, compiled, events = [], [], []
get_key, compile_ = compiler._get_cache_key, compiler.backend_compile_and_load
compiler._get_cache_key = lambda *a, **k: keys.append(get_key(*a, **k)) or keys[-1]
compiler.backend_compile_and_load = lambda *a, **k: compiled.append(1) or compile_(*a, **k)
monitoring.register_event_listener(lambda event, **k: events.append(event))
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d"))
x = jax.make_array_from_process_local_data(sharding, np.arange(2.0))
y = jax.jit(lambda x: jax.numpy.sin(x).sum() * 3, in_shardings=sharding)(x)
print(keys[-1], float(y), len(compiled),
      events.count("/ddpm_jax/tests/program_received")
      + events.count("/jax/compilation_cache/cache_hits"))
"""


@pytest.mark.slow
def test_a_jobs_processes_compile_each_program_once(tmp_path):
  # tests/site/sitecustomize.py: the key is the same in both processes;
  # process 0 compiles the program, process 1 receives it (or, where it
  # asks after process 0 has written it, reads it from the cache).
  port = processes.free_port()
  env = dict(os.environ, XLA_FLAGS=processes.xla_flags(2),
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  procs = [subprocess.Popen(
      [sys.executable, "-c", _JOB, f"localhost:{port}", str(i)], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # The last line of each (gloo prints its connections on stdout too).
  (key0, y0, compiled0, received0), (key1, y1, compiled1, received1) = (
      out.splitlines()[-1].split() for out, _ in outs)
  assert key0 == key1 and y0 == y1, outs
  assert (compiled0, received0, compiled1, received1) == ("1", "0", "0", "1")
