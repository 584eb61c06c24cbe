"""Trains a DDPM: python train.py --config configs/digits.py --workdir DIR.

Any config field can be overridden: --config.training.num_steps=1000.
Started again on the same workdir, it resumes from the latest checkpoint.
On a multi-host system (a Cloud TPU pod slice, a SLURM or multi-node GPU
job) run the same command on every host with --multihost: JAX's
distributed runtime connects the processes (jax.distributed.initialize
detects the cluster) and the batch is split over every device of every host.
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
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() "
                  "first: one process per host of a multi-host job.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: use --config and --workdir")
  if FLAGS.multihost:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  from ddpm_jax import training  # pylint: disable=g-import-not-at-top
  with cli.errors_as_one_line():
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  sys.exit(cli.run(main))
