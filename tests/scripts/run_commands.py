"""Runs command lines of absl entry points in this one process, one after
another, as ``python SCRIPT ARGS...`` would run each of them, in the
current directory:

  python tests/scripts/run_commands.py SCRIPT < JSON list of argv lists
  python tests/scripts/run_commands.py --entries < JSON list of
      [SCRIPT, [argv, ...]] pairs, run in that order

SCRIPT is a path under the repository, or ``-m MODULE`` (as one string in
--entries' pairs). Prints one JSON line: a list of {"argv", "rc",
"stdout", "stderr"}, one per command, in order.

Running them in one process shares the JIT caches between the commands,
and saves a Python start (imports, tracing) per command, so that a test
can run every documented command for the cost of one start
(tests/test_docs_run.py). Each entry's flags are dropped after its
commands, so that the next entry defines its own."""

import contextlib
import io
import json
import os
import runpy
import sys
import time

from absl import flags
from absl import logging as absl_logging

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


# Libraries that define flags once, when first imported (absl's help flags
# at its first app.run, Orbax's, tfds'): theirs stay. Every other flag an
# entry point brought is its own (its module's, or a helper's it calls:
# ddpm_jax's define_* functions, benchmarks/common.py's) and is defined
# again the next time an entry point loads.
_LIBRARIES = ("absl.", "orbax", "tensorflow", "etils", "jax")


def drop_entry_flags(before):
  """Deletes the flags defined since ``before`` (a set of flag names) but
  the libraries', and every --config.FIELD override flag, so that the next
  entry point defines its own."""
  values = flags.FLAGS
  values.unparse_flags()
  kept = {f.name for module, defined in values.flags_by_module_dict().items()
          if module.startswith(_LIBRARIES) for f in defined}
  for name in [n for n in values if n not in before and (
      n not in kept or "." in n)]:
    delattr(values, name)


def load(script):
  """Executes the entry point ``script`` (a path, or '-m MODULE') as a
  module that is not __main__, which defines its flags; returns the
  module's globals (its ``main`` among them)."""
  if script.startswith("-m "):
    return runpy.run_module(script[3:], run_name="documented_command")
  return runpy.run_path(os.path.join(ROOT, script),
                        run_name="documented_command")


def app_run(main):
  """``absl.app.run(main)`` as a script's ``__main__`` block runs it (the
  benchmarks'); its exit code. An exit with a message prints it to stderr,
  as Python does at a process's end."""
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    app.run(main)
  except SystemExit as e:
    if e.code is None:
      return 0
    if isinstance(e.code, int):
      return e.code
    print(e.code, file=sys.stderr)
    return 1
  return 0


def runner(script):
  """How ``script``'s ``__main__`` block runs its main: ddpm_jax's
  ``cli.run`` (the entry points), or absl's ``app.run`` (the
  benchmarks)."""
  from ddpm_jax import cli  # pylint: disable=g-import-not-at-top
  if script.startswith("-m "):
    return cli.run
  with open(os.path.join(ROOT, script), encoding="utf-8") as f:
    return cli.run if "cli.run(main)" in f.read() else app_run


def run_commands(script, argvs):
  """Runs each argv of ``argvs`` with ``script``'s main, as its
  ``__main__`` block does for a real process (:func:`runner`); one result
  dict per argv."""
  run = runner(script)
  before = set(flags.FLAGS)
  name = script[3:] if script.startswith("-m ") else script
  # As in a process of its own, the module executes with its (first)
  # command line in sys.argv: ml_collections defines the --config.FIELD
  # overrides of a default config file from it, at the definition.
  sys.argv = [name] + (list(argvs[0]) if argvs else [])
  module = load(script)
  loaded = set(flags.FLAGS)
  results = []
  for argv in argvs:
    # absl keeps the values of an earlier parse for flags a later command
    # does not give; ml_collections reads --config.* overrides from sys.argv.
    flags.FLAGS.unparse_flags()
    # ml_collections defines a flag per --config.FIELD override at each
    # parse (and at the definition, for a default config file): drop the
    # previous command's.
    for flag in [n for n in flags.FLAGS if "." in n and n not in loaded]:
      delattr(flags.FLAGS, flag)
    sys.argv = [name] + argv
    out, err = io.StringIO(), io.StringIO()
    start = time.time()
    # absl's log lines too go to the command's stderr, as in a process of
    # its own.
    python_handler = absl_logging.get_absl_handler().python_handler
    stream = python_handler.stream
    python_handler.stream = err
    try:
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(module["main"])
    finally:
      python_handler.stream = stream
    results.append({"argv": argv, "rc": rc, "stdout": out.getvalue(),
                    "stderr": err.getvalue()})
    print(f"{name} {' '.join(argv)}: rc {rc} in {time.time() - start:.1f} s",
          file=sys.stderr)
  drop_entry_flags(before)
  return results


def main():
  sys.path.insert(0, ROOT)
  if sys.argv[1] == "--entries":
    groups = json.load(sys.stdin)
  elif sys.argv[1] == "-m":
    groups = [("-m " + sys.argv[2], json.load(sys.stdin))]
  else:
    groups = [(sys.argv[1], json.load(sys.stdin))]
  results = []
  for script, argvs in groups:
    results += run_commands(script, argvs)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
