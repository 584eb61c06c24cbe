"""Parses documented command lines against their entry points' absl flags
without running them:

  python tests/scripts/parse_commands.py < JSON list of [SCRIPT, [argv,
      ...]] pairs

SCRIPT is a path under the repository, or ``-m MODULE``. Each entry point
is loaded in turn in this one process (its flags dropped after its
lines). Prints one JSON object: {"errors": [...]} naming each command
line that does not parse, whose --config file does not load, or whose
config fails validate_config."""

import json
import os
import sys

from absl import flags
from run_commands import drop_entry_flags, load  # this folder, on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def parse_errors(script, argvs):
  """The errors of ``argvs`` against the flags of ``script``."""
  from ddpm_jax import validation  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  before = set(values)
  name = script[3:] if script.startswith("-m ") else script
  sys.argv = [name]
  load(script)
  loaded = set(values)
  errors = []
  for argv in argvs:
    line = " ".join([name] + argv)
    # ml_collections reads --config.* overrides from sys.argv.
    sys.argv = [name] + argv
    values.unparse_flags()
    for flag in [n for n in values if "." in n and n not in loaded]:
      delattr(values, flag)
    try:
      rest = values(sys.argv)
      if len(rest) > 1:
        raise ValueError(f"unexpected arguments {rest[1:]}")
      if "config" in values and values["config"].present:
        config = values.config
        if "diffusion" in config:
          validation.validate_config(config)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"{line}: {type(e).__name__}: "
                    f"{str(e).strip().splitlines()[-1] if str(e) else ''}")
  drop_entry_flags(before)
  return errors


def main():
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  errors = []
  for script, argvs in json.load(sys.stdin):
    errors += parse_errors(script, argvs)
  print(json.dumps({"errors": errors}))


if __name__ == "__main__":
  main()
