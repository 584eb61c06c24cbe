"""Parses documented command lines against an entry point's absl flags
without running it: python tests/scripts/parse_commands.py SCRIPT
(a path, or -m MODULE) < JSON list of argv lists. Prints one JSON object:
{"errors": [...]} naming each command line that does not parse, whose
--config file does not load, or whose config fails validate_config."""

import json
import os
import runpy
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def main():
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  if sys.argv[1] == "-m":
    script = sys.argv[2]
    runpy.run_module(script, run_name="documented_command")
  else:
    script = sys.argv[1]
    runpy.run_path(os.path.join(ROOT, script),
                   run_name="documented_command")
  from ddpm_jax import validation  # pylint: disable=g-import-not-at-top
  errors = []
  values = flags.FLAGS
  for argv in json.load(sys.stdin):
    line = " ".join([script] + argv)
    # ml_collections reads --config.* overrides from sys.argv.
    sys.argv = [script] + argv
    values.unparse_flags()
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
  print(json.dumps({"errors": errors}))


if __name__ == "__main__":
  main()
