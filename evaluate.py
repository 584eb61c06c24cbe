"""Evaluates a model: python evaluate.py --workdir DIR (a train.py run) or
--model PATH (a diffusers UNet2DModel directory or an original TF
checkpoint, with --image_size; give its data with --dataset).

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
see ddpm_jax/interop/inception_weights.py for the one-time download), or
against precomputed statistics (--reference_stats, an .npz with mu and
sigma: ours, pytorch-fid's or TTUR's). --precision_recall adds improved
precision and recall (k=3) against as many reference images as samples.

Prints one JSON line.
"""

import json
import os
import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("model", None, "A diffusers model directory or an "
                    "original TF checkpoint (model.ckpt-NNNN).")
flags.DEFINE_integer("image_size", None, "--model TF checkpoints: the image "
                     "size (32 for CIFAR-10, 256 for CelebA-HQ / LSUN).")
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
flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "--metric digits: the "
                  "sampler (default: the config's).")
flags.DEFINE_integer("steps", None, "--metric digits: sampler steps (0: all "
                     "T; default: the config's).")
flags.DEFINE_integer("seed", 0, "--metric digits: sampling seed.")
flags.DEFINE_bool("ema", True, "Use the EMA parameters (--noema: the raw "
                  "ones).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if (FLAGS.workdir is None) == (FLAGS.model is None):
    cli.fail("give exactly one of --workdir (a train.py run) and --model (a "
             "diffusers model directory or TF checkpoint)")
  if FLAGS.num < 0 or FLAGS.batch_size <= 0:
    cli.fail("--num must be >= 0 and --batch_size positive")
  if FLAGS.metric != "fid" and (FLAGS.reference_stats or
                                FLAGS.precision_recall):
    cli.fail("--reference_stats and --precision_recall go with --metric fid")
  if FLAGS.model is not None and not FLAGS.dataset and not (
      FLAGS.metric == "fid" and FLAGS.reference_stats and
      not FLAGS.precision_recall):
    cli.fail("--model does not record its data: pass --dataset (digits, a "
             "tfds name such as cifar10, or a directory of images)")
  with cli.errors_as_one_line():
    # pylint: disable=g-import-not-at-top
    from ddpm_jax import evaluation, from_config
    from ddpm_jax.interop import sources
    if FLAGS.workdir is not None:
      config, params, step = sources.load_workdir(FLAGS.workdir, FLAGS.ema)
    else:
      config, params, _ = sources.load_model(FLAGS.model, FLAGS.image_size,
                                             FLAGS.ema)
      step = None  # an imported model: no training step recorded
    _set_dataset(config)
    if FLAGS.metric in ("digits", "fid"):
      print(json.dumps(_sample_quality(config, params, step)))
      return
    if FLAGS.split:
      config.data.eval_split = FLAGS.split
    config.training.eval_examples = FLAGS.num
    config.training.eval_batch_size = FLAGS.batch_size
    result = evaluation.evaluate(config, from_config.make_model(config), params,
                               from_config.make_schedule(config))
  result.update(step=step, split=config.data.get("eval_split", "test"))
  print(json.dumps(result))


def _set_dataset(config):
  """--dataset / --data_dir onto ``config.data`` (a directory of images is
  the 'folder' dataset)."""
  if FLAGS.dataset:
    if os.path.isdir(FLAGS.dataset):
      config.data.name, config.data.folder = "folder", FLAGS.dataset
    else:
      config.data.name = FLAGS.dataset
  if FLAGS.data_dir is not None:
    config.data.data_dir = FLAGS.data_dir


def _sample_quality(config, params, step):
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import from_config, sample_quality, validation
  if FLAGS.sampler is not None:
    config.sampling.sampler = FLAGS.sampler
  if FLAGS.steps is not None:
    config.sampling.steps = FLAGS.steps
  validation.validate_config(config)
  result = sample_quality.score(
      config, from_config.make_model(config), params, FLAGS.metric,
      FLAGS.num or sample_quality.DEFAULT_NUM[FLAGS.metric], FLAGS.seed,
      FLAGS.batch_size, FLAGS.inception, FLAGS.reference_split,
      FLAGS.reference_num, FLAGS.reference_stats, FLAGS.precision_recall)
  result.update(step=step, sampler=config.sampling.get("sampler", "ddpm"),
                steps=int(config.sampling.get("steps", 0)) or
                config.diffusion.num_timesteps, seed=FLAGS.seed)
  return result


if __name__ == "__main__":
  sys.exit(cli.run(main))
