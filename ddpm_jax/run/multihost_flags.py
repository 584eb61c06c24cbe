"""The flags of a multi-host job, for every entry point (train.py,
sample.py, evaluate.py): light to import, so that ``--help`` answers at
once."""

from __future__ import annotations

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS


def define_multihost_flags() -> None:
  """--multihost, --coordinator_address, --num_processes, --process_id."""
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() "
                    "first: one process per host of a multi-host job.")
  flags.DEFINE_string("coordinator_address", None, "With --multihost: "
                      "host:port of process 0, where the cluster is not "
                      "auto-detected.")
  flags.DEFINE_integer("num_processes", None, "With --multihost: the number "
                       "of processes, where not auto-detected.")
  flags.DEFINE_integer("process_id", None, "With --multihost: this "
                       "process's index, where not auto-detected.")


def start_multihost() -> None:
  """With --multihost, joins this process to its multi-host job
  (``jax.distributed.initialize``); a one-line error for the manual flags
  without it. Call before anything touches the devices."""
  manual = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in manual) and not FLAGS.multihost:
    cli.fail("--coordinator_address, --num_processes and --process_id need "
             "--multihost")
  if FLAGS.multihost:
    import jax  # pylint: disable=g-import-not-at-top
    # CPU processes (tests, CPU clusters) exchange data through gloo; GPU
    # and TPU backends use their own collectives and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
