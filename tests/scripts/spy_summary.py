"""Where the Python time of a suite run goes, from a py-spy sample of every
process it starts.

  pip install py-spy
  JAX_COMPILATION_CACHE_DIR=/tmp/c DDPM_JAX_CACHE=/tmp/c/ddpm_jax \\
    py-spy record -r 20 --subprocesses -f raw -o /tmp/spy.txt -- \\
    python -m pytest -q
  python tests/scripts/spy_summary.py /tmp/spy.txt --rate 20

py-spy samples the Python threads of the workers and of every process they
start (train.py runs, multi-process jobs), 20 times a second, where
tests/scripts/suite_profile.py counts compiles. This prints, in seconds of
samples: the total by kind of work (imports, tracing, lowering, the
persistent cache's reads and writes, Orbax's checkpoint work, the rest),
then by kind of process (the workers, train.py, ...: how many, their
samples, their imports), then the packages whose imports take longest.
XLA's compiling and running happen in threads of its own and are not in
these samples: the run's CPU seconds less these are mostly those.
"""

from __future__ import annotations

import argparse
import collections
import re

# A sample's kind of work: the first of these found in its stack.
KINDS = (("cache read", "_cache_read ("), ("cache write", "_cache_write ("),
         ("compile call", "backend_compile"),
         ("lowering", "lower_jaxpr_to_module ("),
         ("tracing", "trace_to_jaxpr ("), ("import", "_find_and_load ("),
         ("checkpoint restore", "restore_latest ("),
         ("checkpoint save", "save (ddpm_jax/checkpoints.py:"),
         ("Orbax (threads)", "orbax/"), ("asyncio (threads)", "asyncio/"))
_PROCESS = re.compile(r'process (\d+):"([^"]*)"')
_MODULE = re.compile(r"<module> \(([^:]+)")
_OURS = ("ddpm_jax", "tests", "benchmarks", "configs", "<string>")


def samples(path):
  """(stack, count) of each line of a py-spy raw file: the stack is the
  process labels and frames, ';'-separated."""
  with open(path) as f:
    for line in f:
      stack, _, n = line.rstrip("\n").rpartition(" ")
      if n.isdigit():
        yield stack, int(n)


def process_kind(stack):
  """(pid, kind) of the innermost process in ``stack``: 'worker' for a
  pytest worker, else its script and first argument; (None, None) where
  the stack names no process."""
  found = _PROCESS.findall(stack)  # its command lines may hold ';'
  if not found:
    return None, None
  pid, cmd = found[-1]
  if "exec(eval" in cmd:  # pytest-xdist's worker
    return pid, "worker"
  words = [w for w in cmd.split()[1:3] if not w.startswith("/tmp")]
  return pid, " ".join(words)[:60]


def summarize(path, rate):
  """The three tables, as lines."""
  kinds, procs = collections.Counter(), collections.Counter()
  pids, imported = collections.defaultdict(set), collections.Counter()
  proc_imports = collections.Counter()
  for stack, n in samples(path):
    kind = next((name for name, mark in KINDS if mark in stack), "other")
    kinds[kind] += n
    pid, proc = process_kind(stack)
    if proc is not None:
      procs[proc] += n
      pids[proc].add(pid)
    if kind == "import":
      if proc is not None:
        proc_imports[proc] += n
      modules = [m.group(1) for m in map(_MODULE.match, stack.split(";"))
                 if m]
      ours = [i for i, m in enumerate(modules)
              if m.startswith(_OURS) or "/" not in m]  # or a script
      first = modules[ours[-1] + 1] if ours and ours[-1] + 1 < len(
          modules) else (modules[0] if modules else "?")
      imported[first.split("/")[0]] += n
  out = [f"{sum(kinds.values()) / rate:.0f} s of samples", "", "by kind:"]
  out += [f"  {k:20s} {n / rate:7.1f} s" for k, n in kinds.most_common()]
  out += ["", "by process (count x: samples, of them imports):"]
  out += [f"  {len(pids[k]):4d} x {k:44s} {n / rate:7.1f} s "
          f"{proc_imports[k] / rate:6.1f} s" for k, n in procs.most_common(20)]
  out += ["", "imports, by the package our code imported:"]
  out += [f"  {k:30s} {n / rate:7.1f} s" for k, n in imported.most_common(15)]
  return out


def main():
  """Prints the summary of the raw file named on the command line."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("raw", help="py-spy's output (-f raw)")
  parser.add_argument("--rate", type=float, default=20,
                      help="py-spy's -r (samples per second)")
  args = parser.parse_args()
  print("\n".join(summarize(args.raw, args.rate)))


if __name__ == "__main__":
  main()
