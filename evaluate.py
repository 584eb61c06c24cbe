"""Bits/dim of a trained model: python evaluate.py --workdir DIR.

Evaluates the variational bound (eq. 5: the prior term, every KL term and
the discretized decoder) of the workdir's latest checkpoint (EMA parameters
unless --noema) on a held-out split of its dataset, and prints one JSON
line: total bits/dim and its parts.
"""

import json
import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("split", None, "Dataset split (default: the config's "
                    "data.eval_split).")
flags.DEFINE_integer("num", 0, "Evaluate at most this many images (0: the "
                     "whole split).")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_bool("ema", True, "Use the EMA parameters (--noema: the raw "
                  "ones).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if FLAGS.num < 0 or FLAGS.batch_size <= 0:
    cli.fail("--num must be >= 0 and --batch_size positive")
  with cli.errors_as_one_line():
    # pylint: disable=g-import-not-at-top
    from ddpm_jax import training
    from ddpm_jax.interop import sources
    config, params, step = sources.load_workdir(FLAGS.workdir, FLAGS.ema)
    if FLAGS.split:
      config.data.eval_split = FLAGS.split
    config.training.eval_examples = FLAGS.num
    config.training.eval_batch_size = FLAGS.batch_size
    result = training.evaluate(config, training.make_model(config), params,
                               training.make_schedule(config))
  result.update(step=step, split=config.data.get("eval_split", "test"))
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(cli.run(main))
