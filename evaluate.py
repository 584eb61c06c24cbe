"""Evaluates a trained model: python evaluate.py --workdir DIR.

--metric bpd (default): the variational bound (eq. 5: the prior term,
every KL term and the discretized decoder) of the workdir's latest
checkpoint (EMA parameters unless --noema) on a held-out split of its
dataset: total bits/dim and its parts.

--metric digits (digits models): draws --num samples with the config's
sampler (or --sampler / --steps) and scores them offline with
ddpm_jax.digits_score: the Fréchet distance of the digits judge's features
to the held-out split, the judge's confidence and an IS-like score.

--metric fid: draws --num samples (default 50000, the paper's protocol)
and computes FID against the statistics of --reference_split of the
model's dataset (default train, as the paper; cached after the first run)
and the Inception Score (10 splits), with the FID Inception's weights
(--inception, default ~/.cache/ddpm_jax/pt_inception-2015-12-05.safetensors;
see ddpm_jax/interop/inception_weights.py for the one-time download).

Prints one JSON line.
"""

import json
import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("split", None, "Dataset split (default: the config's "
                    "data.eval_split).")
flags.DEFINE_integer("num", 0, "bpd: evaluate at most this many images (0: "
                     "the whole split); digits / fid: samples to draw (0: "
                     "297, the held-out split's size / 50000).")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_enum("metric", "bpd", ["bpd", "digits", "fid"],
                  "What to evaluate.")
flags.DEFINE_string("inception", "", "--metric fid: the FID Inception's "
                    "weights (safetensors or pytorch-fid's .pth).")
flags.DEFINE_string("reference_split", "train", "--metric fid: the split "
                    "whose statistics FID compares against.")
flags.DEFINE_integer("reference_num", 0, "--metric fid: at most this many "
                     "reference images (0: the whole split).")
flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "--metric digits: the "
                  "sampler (default: the config's).")
flags.DEFINE_integer("steps", None, "--metric digits: sampler steps (0: all "
                     "T; default: the config's).")
flags.DEFINE_integer("seed", 0, "--metric digits: sampling seed.")
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
    if FLAGS.metric in ("digits", "fid"):
      print(json.dumps(_sample_quality(config, params, step)))
      return
    if FLAGS.split:
      config.data.eval_split = FLAGS.split
    config.training.eval_examples = FLAGS.num
    config.training.eval_batch_size = FLAGS.batch_size
    result = training.evaluate(config, training.make_model(config), params,
                               training.make_schedule(config))
  result.update(step=step, split=config.data.get("eval_split", "test"))
  print(json.dumps(result))


def _sample_quality(config, params, step):
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import sample_quality, training
  if FLAGS.sampler is not None:
    config.sampling.sampler = FLAGS.sampler
  if FLAGS.steps is not None:
    config.sampling.steps = FLAGS.steps
  training.validate_config(config)
  result = sample_quality.score(
      config, training.make_model(config), params, FLAGS.metric,
      FLAGS.num or (297 if FLAGS.metric == "digits" else 50000), FLAGS.seed,
      FLAGS.batch_size, FLAGS.inception, FLAGS.reference_split,
      FLAGS.reference_num)
  result.update(step=step, sampler=config.sampling.get("sampler", "ddpm"),
                steps=int(config.sampling.get("steps", 0)) or
                config.diffusion.num_timesteps, seed=FLAGS.seed)
  return result


if __name__ == "__main__":
  sys.exit(cli.run(main))
