"""Trains a noise-aware classifier for classifier guidance.

python train_classifier.py --config configs/digits_classifier.py --workdir W

Writes W/config.json and W/classifier_params (Orbax), then prints the
held-out accuracy at a few t as one JSON line. Use it with
sample.py --workdir MODEL --classifier W --class 3 --guidance 10, as in
docs/sampling.md.
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Classifier config file.")
flags.DEFINE_string("workdir", None, "Where to write the classifier.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  cli.prepare_jax()
  with cli.errors_as_one_line():
    # The library loads once the flags have parsed: --help answers at once.
    from ddpm_jax.run import classifier_training  # pylint: disable=g-import-not-at-top
    accuracy = classifier_training.train_classifier(FLAGS.config,
                                                    FLAGS.workdir)
  print(json.dumps({"held_out_accuracy_at_t": accuracy}))


if __name__ == "__main__":
  sys.exit(cli.run(main))
