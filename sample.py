"""Draws samples from a trained run: python sample.py --workdir DIR.

Loads the workdir's config and latest checkpoint (EMA parameters unless
--noema), runs the lax.scan sampler and writes OUT.png (a grid) and OUT.npz
(uint8 images, key 'images').
"""

import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("batch_size", 64, "Samples drawn per sampler call.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", None, "Output prefix (default: "
                    "WORKDIR/samples/sample_seed<SEED>_step<STEP>).")
flags.DEFINE_bool("ema", True, "Use the EMA parameters (--noema: the raw "
                  "ones).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  with cli.errors_as_one_line():
    from ddpm_jax import sampling_cli  # pylint: disable=g-import-not-at-top
    path = sampling_cli.sample_from_workdir(
        FLAGS.workdir, num=FLAGS.num, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, out=FLAGS.out, use_ema=FLAGS.ema)
  print(f"wrote {path}.png and {path}.npz")


if __name__ == "__main__":
  sys.exit(cli.run(main))
