"""Runs command lines of one absl entry point in this one process, one after
another, as ``python SCRIPT ARGS...`` would run each of them: python
tests/scripts/run_commands.py SCRIPT (a path under the repository, or -m
MODULE) < JSON list of argv lists, in the current directory. Prints one
JSON line: a list of {"argv", "rc", "stdout", "stderr"}, one per command.

Running them in one process shares the JIT caches between the commands, so
that a test can run every documented command of an entry point for the
cost of one start (tests/test_docs_run.py)."""

import contextlib
import io
import json
import os
import runpy
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def main():
  sys.path.insert(0, ROOT)
  if sys.argv[1] == "-m":
    script = sys.argv[2]
    module = runpy.run_module(script, run_name="documented_command")
  else:
    script = sys.argv[1]
    module = runpy.run_path(os.path.join(ROOT, script),
                            run_name="documented_command")
  from ddpm_jax import cli  # pylint: disable=g-import-not-at-top
  results = []
  for argv in json.load(sys.stdin):
    # absl keeps the values of an earlier parse for flags a later command
    # does not give; ml_collections reads --config.* overrides from sys.argv.
    flags.FLAGS.unparse_flags()
    # ml_collections defines a flag per --config.FIELD override at each
    # parse: drop the previous command's.
    for name in [n for n in flags.FLAGS if "." in n]:
      delattr(flags.FLAGS, name)
    sys.argv = [script] + argv
    out, err = io.StringIO(), io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      rc = cli.run(module["main"])
    results.append({"argv": argv, "rc": rc, "stdout": out.getvalue(),
                    "stderr": err.getvalue()})
    print(f"{script} {' '.join(argv)}: rc {rc} in {time.time() - start:.1f} s",
          file=sys.stderr)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
