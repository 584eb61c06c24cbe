"""Trains a DDPM: python train.py --config configs/digits.py --workdir DIR.

Any config field can be overridden: --config.training.num_steps=1000.
Started again on the same workdir, it resumes from the latest checkpoint.
On a multi-host system (a Cloud TPU pod slice, a SLURM or multi-node GPU
job) run the same command on every host with --multihost: JAX's
distributed runtime connects the processes (jax.distributed.initialize
detects the cluster; elsewhere give --coordinator_address, --num_processes
and --process_id) and the batch is split over every device of every host.
SIGTERM on any host (a preemption notice) makes every host save the same
step and exit; run the same commands again to continue.
"""

import sys

from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli
from ddpm_jax.run import flag_checks
from ddpm_jax.run import multihost_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and "
                    "TensorBoard logs.")
config_flags.DEFINE_config_file("config", None, "Experiment config file "
                                "(configs/*.py).", lock_config=True)
multihost_flags.define_multihost_flags()
flags.DEFINE_bool("force_unlock", False, "Take over the workdir's lock "
                  "(train.lock) that another run left, e.g. one on another "
                  "host that is known to be gone. A lock of a process on "
                  "this host that no longer runs is taken over without it.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: use --config and --workdir")
  flag_checks.new_workdir(FLAGS.workdir)
  cli.prepare_jax()
  multihost_flags.start_multihost()
  # After jax.distributed.initialize: the library touches the devices.
  from ddpm_jax.run import train_loop  # pylint: disable=g-import-not-at-top
  with cli.errors_as_one_line():
    train_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                  force_unlock=FLAGS.force_unlock)


if __name__ == "__main__":
  sys.exit(cli.run(main))
