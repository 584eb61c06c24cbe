"""Where the test suite's time goes: programs compiled and compile seconds
per test file, cold (an empty compile cache) or warm.

  python tests/scripts/suite_profile.py --cache /tmp/c [PYTEST ARGS...]
  python tests/scripts/suite_profile.py --cache /tmp/c [PYTEST ARGS...]

The first run fills the empty folder /tmp/c (cold), the second finds it full
(warm); without --cache each run is cold in a new temporary folder. The
suite runs as the README runs it (``python -m pytest -q``, its workers and
subprocesses sharing the cache), with this module as a pytest plugin that
names the running test: every XLA compile of the workers and of every
Python process they start (through tests/site/sitecustomize.py) is
recorded under it.
Prints a table per test file, longest first:

- wall: seconds from the file's first test to its last (fixtures included);
- compiled: programs compiled, here and in the file's subprocesses, and
  in brackets those that took at least 0.5 s (the suite's cache keeps
  every program; the entries the whole run added are counted above the
  table);
- compile s: the seconds those compiles took;
- hits: programs read back from the persistent cache instead, or
  received from the first process of a multi-process job;
- cpu s: CPU seconds (user and system) of the worker and of the processes
  it started and waited for while the file's tests ran. The suite's two
  workers keep both cores busy, so this, not wall, is what a file costs
  the run;
- gc s: of those, the seconds Python's cyclic garbage collector took (the
  worker's per test, a started process's at its exit).

Then the tests that wait (:func:`waits`): those that sleep or wait on a
timeout while a core could work.

Compiles outside any test (at collection) go in a row named '?'. While
profiling, tests/site/sitecustomize.py shadows any other sitecustomize
module.
"""

import argparse
import atexit
import collections
import gc
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
LOG_ENV = "DDPM_JAX_SUITE_PROFILE"
TEST_ENV = "DDPM_JAX_SUITE_PROFILE_TEST"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
# A program a process of a test job received from the job's first process
# instead of compiling it (tests/site/sitecustomize.py): counted as a hit.
RECEIVED_EVENT = "/ddpm_jax/tests/program_received"
SLOW_SECS = 0.5  # a compile this long is counted apart (in brackets)


def _append(record):
  """Appends ``record`` to the log; a process that may not write it (a
  test's file-size limit, tests/test_storage_faults.py) goes unrecorded
  rather than failing inside JAX."""
  line = json.dumps(record) + "\n"
  try:
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
      os.write(fd, line.encode())
    finally:
      os.close(fd)
  except OSError:
    pass


def register_listeners(current_test):
  """Appends each backend compile of this process (and whether the
  persistent cache answered it) to $DDPM_JAX_SUITE_PROFILE, under
  ``current_test()``."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  local = threading.local()

  def on_event(event, **kwargs):
    del kwargs
    if event in (HIT_EVENT, RECEIVED_EVENT):
      local.hit = True

  def on_duration(event, secs, **kwargs):
    if event != COMPILE_EVENT:
      return
    hit = getattr(local, "hit", False)
    local.hit = False
    _append({"kind": "compile", "test": current_test(), "pid": os.getpid(),
             "secs": secs, "hit": hit, "fun": kwargs.get("fun_name", "")})

  monitoring.register_event_listener(on_event)
  monitoring.register_event_duration_secs_listener(on_duration)
  if "_pytest" not in sys.modules:  # a test worker: the plugin times it
    _time_gc()
    atexit.register(lambda: _flush_gc(current_test()))


_GC = {"start": None, "secs": 0.0}  # this process's collections


def _time_gc():
  """Adds each garbage collection's seconds to ``_GC`` (once)."""
  def on_gc(phase, info):
    del info
    if phase == "start":
      _GC["start"] = time.perf_counter()
    elif _GC["start"] is not None:
      _GC["secs"] += time.perf_counter() - _GC["start"]
      _GC["start"] = None
  if not any(getattr(c, "_suite_profile", False) for c in gc.callbacks):
    on_gc._suite_profile = True  # pylint: disable=protected-access
    gc.callbacks.append(on_gc)


def _flush_gc(test):
  """Records the collector's seconds since the last record, under
  ``test``."""
  if _GC["secs"]:
    _append({"kind": "gc", "test": test, "pid": os.getpid(),
             "secs": _GC["secs"]})
    _GC["secs"] = 0.0


# -- pytest plugin (tests/conftest.py loads it when $DDPM_JAX_SUITE_PROFILE
# is set); every process's listeners come from tests/site/sitecustomize.py

_RUN_HERE = {}  # test -> CPU seconds at its start, for this process's tests


def _cpu_secs():
  """User and system seconds of this process and its waited-for children."""
  return sum(u.ru_utime + u.ru_stime for u in (
      resource.getrusage(resource.RUSAGE_SELF),
      resource.getrusage(resource.RUSAGE_CHILDREN)))


def pytest_runtest_protocol(item, nextitem):
  """Marks the running test (for this process and its subprocesses)."""
  del nextitem
  if not os.environ.get(LOG_ENV):
    return None
  _time_gc()
  _flush_gc("?")  # collections between tests (collection, fixtures' ends)
  _RUN_HERE[item.nodeid] = _cpu_secs()
  os.environ[TEST_ENV] = item.nodeid
  _append({"kind": "start", "test": item.nodeid, "t": time.time()})
  return None


def pytest_runtest_logfinish(nodeid, location):
  """Records the end of a test this process ran."""
  del location
  if os.environ.get(LOG_ENV) and nodeid in _RUN_HERE:
    _flush_gc(nodeid)
    _append({"kind": "end", "test": nodeid, "t": time.time(),
             "cpu": _cpu_secs() - _RUN_HERE[nodeid]})


# -- the command -------------------------------------------------------------


def _file(nodeid):
  return nodeid.split("::")[0].rsplit("/", 1)[-1]


def _cache_entries(cache_dir):
  """The compiled programs in a JAX compile cache folder."""
  return {p.name for p in pathlib.Path(cache_dir).glob("*-cache")}


def summarize(records):
  """Per test file: wall seconds, compiles, cached compiles, compile
  seconds, persistent-cache hits, CPU and garbage-collection seconds."""
  rows = collections.defaultdict(lambda: {
      "start": None, "end": None, "tests": 0, "compiled": 0, "cached": 0,
      "compile_s": 0.0, "hits": 0, "cpu": 0.0, "gc_s": 0.0})
  for r in records:
    row = rows[_file(r["test"])]
    if r["kind"] == "start":
      row["tests"] += 1
      row["start"] = (r["t"] if row["start"] is None
                      else min(row["start"], r["t"]))
    elif r["kind"] == "end":
      row["end"] = r["t"] if row["end"] is None else max(row["end"], r["t"])
      row["cpu"] += r.get("cpu", 0.0)
    elif r["kind"] == "gc":
      row["gc_s"] += r["secs"]
    elif r["hit"]:
      row["hits"] += 1
    else:
      row["compiled"] += 1
      row["cached"] += r["secs"] >= SLOW_SECS
      row["compile_s"] += r["secs"]
  for row in rows.values():
    row["wall"] = ((row["end"] - row["start"])
                   if row["start"] is not None and row["end"] is not None
                   else 0.0)
  return dict(rows)


def waits(records, min_s=3.0):
  """The tests that used less than half a core while they ran (CPU
  seconds of the worker and its waited-for processes under half their
  wall seconds) and whose wall seconds exceed their CPU seconds by at
  least ``min_s``, most first: [(idle s, wall s, cpu s, test)]. Such a
  test sleeps or waits on a timeout while its core could work. (A test
  that computes runs slower than its CPU seconds too while the other
  worker shares the cores, but not at under half a core.)"""
  starts = {r["test"]: r["t"] for r in records if r["kind"] == "start"}
  out = []
  for r in records:
    if r["kind"] == "end" and r["test"] in starts:
      wall = r["t"] - starts[r["test"]]
      cpu = r.get("cpu", 0.0)
      if wall - cpu >= min_s and cpu < wall / 2:
        out.append((wall - cpu, wall, cpu, r["test"]))
  return sorted(out, reverse=True)


def waits_table(rows):
  """:func:`waits`' rows as a Markdown table."""
  lines = ["| test | idle s | wall s | cpu s |", "|---|---:|---:|---:|"]
  lines += [f"| {test} | {idle:.0f} | {wall:.0f} | {cpu:.0f} |"
            for idle, wall, cpu, test in rows]
  return "\n".join(lines)


def table(rows):
  """The per-file rows as a Markdown table, longest first, with totals."""
  lines = ["| file | tests | wall s | cpu s | gc s | compiled (>= 0.5 s) | "
           "compile s | hits |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  order = sorted(rows, key=lambda f: -rows[f]["wall"])
  for f in order:
    r = rows[f]
    lines.append(f"| {f} | {r['tests']} | {r['wall']:.0f} | {r['cpu']:.0f} | "
                 f"{r['gc_s']:.1f} | {r['compiled']} ({r['cached']}) | "
                 f"{r['compile_s']:.0f} | {r['hits']} |")
  tot = {k: sum(r[k] for r in rows.values())
         for k in ("tests", "compiled", "cached", "compile_s", "hits", "cpu",
                   "gc_s")}
  lines.append(f"| all | {tot['tests']} | | {tot['cpu']:.0f} | "
               f"{tot['gc_s']:.1f} | {tot['compiled']} ({tot['cached']}) | "
               f"{tot['compile_s']:.0f} | {tot['hits']} |")
  return "\n".join(lines)


def main():
  """Runs the suite with the profiler; prints the table; pytest's exit."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cache", help="compile cache folder (default: a new "
                      "empty one, i.e. a cold run)")
  parser.add_argument("--out", help="also write the records and rows here "
                      "(JSON)")
  args, pytest_args = parser.parse_known_args()
  work = tempfile.mkdtemp(prefix="suite_profile_")
  cache = args.cache or os.path.join(work, "jax_cache")
  os.makedirs(cache, exist_ok=True)
  before = _cache_entries(cache)
  log = os.path.join(work, "records.jsonl")
  site = str(ROOT / "tests" / "site")
  env = dict(os.environ, **{
      LOG_ENV: log, "JAX_COMPILATION_CACHE_DIR": cache,
      # The digits judge's cache too: cold means a fresh clone's state.
      "DDPM_JAX_CACHE": os.path.join(cache, "ddpm_jax"),
      "PYTHONPATH": os.pathsep.join(
          p for p in (site, os.environ.get("PYTHONPATH")) if p)})
  cmd = [sys.executable, "-m", "pytest", "-q"] + pytest_args
  t0 = time.time()
  rc = subprocess.call(cmd, cwd=ROOT, env=env)
  wall = time.time() - t0
  records = []
  if os.path.exists(log):
    with open(log) as f:
      records = [json.loads(line) for line in f]
  rows = summarize(records)
  added = len(_cache_entries(cache) - before)
  print(f"\npytest exit {rc}, {wall:.0f} s wall; {added} entries added to "
        f"the compile cache {cache}\n")
  print(table(rows))
  idle = waits(records)
  if idle:
    print(f"\nTests that wait (under half a core, wall - CPU >= 3 s; "
          f"{sum(w[0] for w in idle):.0f} s in all):\n")
    print(waits_table(idle))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rc": rc, "wall": wall, "cache_added": added, "rows": rows,
                 "records": records}, f)
  return rc


if __name__ == "__main__":
  sys.exit(main())
