"""Shared plumbing of the command-line entry points: one-line errors,
JAX's persistent compilation cache and one CPU device per core."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

from ddpm_jax.storage_error import StorageError

# absl's help flags: asking for help succeeds.
HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull",
              "--helpxml"}

# Errors whose message is written for the user: printed as one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError,
               FloatingPointError, KeyError, ConnectionError, StorageError)


def fail(message: str) -> NoReturn:
  """Prints ``error: message`` to stderr and exits with status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def errors_as_one_line():
  """Turns the user-facing errors raised inside into :func:`fail`."""
  try:
    yield
  except USER_ERRORS as e:
    fail(_first_line(e))


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache, unless
  ``$JAX_COMPILATION_CACHE_DIR`` already chooses one: in ``$DDPM_JAX_CACHE/
  jax`` (default ``~/.cache/ddpm_jax/jax``). A second run of the same
  command loads its train step and sampler instead of compiling them,
  which shortens the digits train step's start severalfold
  (docs/benchmarks.md, 'Measurements behind design choices')."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax  # pylint: disable=g-import-not-at-top
  base = os.environ.get("DDPM_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "ddpm_jax")
  jax.config.update("jax_compilation_cache_dir", os.path.join(base, "jax"))


def prepare_jax() -> None:
  """What an entry point does once its own flags are checked and before it
  uses JAX (which this imports): the persistent compilation cache on
  (:func:`enable_compilation_cache`), progress bars shown, and the CPU
  backend split into one device per core
  (:func:`ddpm_jax.parallel.use_cpu_cores`)."""
  enable_compilation_cache()
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import parallel
  from ddpm_jax import progress
  progress.enable()
  parallel.use_cpu_cores()


def _unknown_field(e: BaseException, argv) -> str:
  """One line for a ``--config.a.b=v`` override that names no field (from
  ml_collections' KeyError / AttributeError): the field as written, and
  ml_collections' suggestion where it has one."""
  text = str(e.args[0]) if e.args else str(e)
  overrides = [a[len("--config."):].split("=")[0] for a in argv
               if a.startswith("--config.")]
  looked_up = re.search(r"Attempting to lookup: (\S+)", text)
  if looked_up:  # a field below a value that has none
    field = looked_up.group(1)
    return (f"unknown config field {field}: {field.rsplit('.', 1)[0]} is a "
            f"value, not a section")
  key = re.search(r"'(\w+)\\?'", text)
  if key:
    for override in overrides:
      parts = override.split(".")
      if key.group(1) in parts:
        field = ".".join(parts[:parts.index(key.group(1)) + 1])
        meant = re.search(r'Did you mean "([^"]+)"', text)
        if meant:
          return f"unknown config field {field} (did you mean {meant.group(1)}?)"
        return (f"unknown config field {field}: check the name against the "
                f"config file")
  return (f"unknown config field {_first_line(e)} in --config."
          f"{', --config.'.join(overrides)}: check the name against the "
          f"config file")


def run(main) -> int:
  """``absl.app.run(main)`` with flag errors reduced to one line. ``main``
  checks its flags first, then calls :func:`prepare_jax`: a refusal comes
  before JAX is imported."""
  def quiet_main(argv):
    # Orbax logs every save at INFO; keep the console to progress and errors.
    logging.set_verbosity(logging.WARNING)
    return main(argv)

  def parse_flags(argv):
    try:
      rest = flags.FLAGS(argv)
    except SystemExit:
      if HELP_FLAGS & set(argv[1:]):
        sys.exit(0)  # absl exits with 1 after printing the help asked for
      raise
    except flags.Error as e:
      text = str(e).strip()
      if "Error whilst parsing config file" in text:
        # ml_collections wraps the config's own error in a traceback: its
        # last line is the message the config file wrote for the user.
        reason = text.splitlines()[-1].split(": ", 1)[-1]
        fail(f"{text.split(':', 1)[0]}: {reason}")
      fail(f"{_first_line(e)} (see --helpshort)")
    except (AttributeError, KeyError, TypeError) as e:
      fail(_unknown_field(e, argv))
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      try:
        flags.FLAGS.config.keys()  # a config that failed to load raises
      except OSError as e:
        path = flags.FLAGS["config"].config_filename
        reason = str(e).strip().splitlines()[-1].strip()
        reason = reason.split("] ", 1)[-1]  # drop "[Errno 2] "
        fail(f"cannot load config file {path!r}: {reason} (give an existing "
             f"file such as configs/digits.py)")
    return rest

  try:
    app.run(quiet_main, flags_parser=parse_flags)
  except SystemExit as e:
    if e.code is None:
      return 0
    return e.code if isinstance(e.code, int) else 1
  return 0
