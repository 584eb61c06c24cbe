"""Evaluates a model: python evaluate.py --workdir DIR (a train.py run) or
--model PATH (a diffusers UNet2DModel directory or an original TF
checkpoint, with --image_size; give its data with --dataset).

--metric bpd (default): the variational bound (eq. 5: the prior term,
every KL term and the discretized decoder) of the workdir's latest
checkpoint (EMA parameters unless --noema) on a held-out split of its
dataset: total bits/dim and its parts.

--metric digits (digits models): draws --num samples with the config's
sampler (or the sampler flags: --sampler, --steps, --eta, --spacing,
--class, --guidance, --classifier ...) and scores them offline with
ddpm_jax.evaluators.digits_score: the Fréchet distance of the digits
judge's features to the held-out split, the judge's confidence and an
IS-like score.

--metric fid: draws --num samples (default 50000, the paper's protocol)
and computes FID against the statistics of --reference_split of the
model's dataset (default train, as the paper; cached after the first run)
and the Inception Score (10 splits), with the FID Inception's weights
(--inception, default ~/.cache/ddpm_jax/pt_inception-2015-12-05.safetensors;
see ddpm_jax/interop/inception_weights.py for the one-time download), or
against precomputed statistics (--reference_stats, an .npz with mu and
sigma: ours, pytorch-fid's or TTUR's). --precision_recall adds improved
precision and recall (k=3) against as many reference images as samples.

Prints one JSON line. With --multihost (as train.py) every process of a
multi-host job runs the same command and computes its share; process 0
prints the result.
"""

import json
import sys

from absl import flags

from ddpm_jax import cli
from ddpm_jax.run import flag_checks
from ddpm_jax.run import flags as run_flags
from ddpm_jax.run import multihost_flags

FLAGS = flags.FLAGS
run_flags.define_source_flags()
run_flags.define_sampler_flags()
multihost_flags.define_multihost_flags()
flags.DEFINE_string("dataset", None, "The model's data: 'digits', a tfds "
                    "name (cifar10, celeb_a_hq/256, lsun/church_outdoor) or a "
                    "directory of images (default: the workdir's config; "
                    "required with --model unless --reference_stats).")
flags.DEFINE_string("data_dir", None, "tfds data_dir holding --dataset.")
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
flags.DEFINE_string("reference_stats", "", "--metric fid: precomputed "
                    "reference statistics (.npz with mu and sigma) in place "
                    "of --reference_split's.")
flags.DEFINE_bool("precision_recall", False, "--metric fid: also improved "
                  "precision and recall (k=3).")
flags.DEFINE_integer("reference_num", 0, "--metric fid: at most this many "
                     "reference images (0: the whole split).")
flags.DEFINE_integer("seed", 0, "--metric digits / fid: sampling seed.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  run_flags.check_one_source()
  if FLAGS.num < 0:
    cli.fail(f"--num must be >= 0 (0: the metric's default), got "
             f"{FLAGS.num}")
  flag_checks.batch_size(FLAGS.batch_size)
  if FLAGS.metric != "fid" and (FLAGS.reference_stats or
                                FLAGS.precision_recall):
    cli.fail("--reference_stats and --precision_recall go with --metric fid")
  if FLAGS.metric == "bpd" and (run_flags.sampler_overrides() or
                                FLAGS.variance):
    cli.fail("the sampler flags go with --metric digits or fid (bits/dim "
             "does not sample)")
  if FLAGS.model is not None and not FLAGS.dataset and not (
      FLAGS.metric == "fid" and FLAGS.reference_stats and
      not FLAGS.precision_recall):
    cli.fail("--model does not record its data: pass --dataset (digits, a "
             "tfds name such as cifar10, or a directory of images)")
  flag_checks.trained_workdir(FLAGS.workdir)
  cli.prepare_jax()
  multihost_flags.start_multihost()
  # pylint: disable=g-import-not-at-top
  from ddpm_jax.run import evaluate
  from ddpm_jax.run import sampling
  # pylint: enable=g-import-not-at-top
  with cli.errors_as_one_line():
    config, params, step = evaluate.load(FLAGS.workdir, FLAGS.model,
                                         FLAGS.image_size, FLAGS.ema,
                                         FLAGS.dtype, FLAGS.revision)
    evaluate.set_dataset(config, FLAGS.dataset, FLAGS.data_dir)
    sampling.check_batch_memory(config, evaluate.largest_batch(
        FLAGS.metric, FLAGS.num, FLAGS.batch_size), FLAGS.memory_check)
    if FLAGS.metric == "bpd":
      result = evaluate.bits_per_dim(config, params, step, FLAGS.split,
                                     FLAGS.num, FLAGS.batch_size)
    else:
      result = evaluate.quality(
          config, params, step, FLAGS.metric, FLAGS.num, FLAGS.seed,
          FLAGS.batch_size, run_flags.sampler_overrides(), FLAGS.variance,
          inception=FLAGS.inception, reference_split=FLAGS.reference_split,
          reference_num=FLAGS.reference_num,
          reference_stats=FLAGS.reference_stats,
          precision_recall=FLAGS.precision_recall)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:  # (every process of a job has it)
    print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(cli.run(main))
