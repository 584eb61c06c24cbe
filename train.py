"""Trains a DDPM: python train.py --config configs/digits.py --workdir DIR.

Any config field can be overridden: --config.training.num_steps=1000.
Started again on the same workdir, it resumes from the latest checkpoint.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and "
                    "TensorBoard logs.")
config_flags.DEFINE_config_file("config", None, "Experiment config file "
                                "(configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: use --config and --workdir")
  from ddpm_jax import training  # pylint: disable=g-import-not-at-top
  with cli.errors_as_one_line():
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  sys.exit(cli.run(main))
