"""How often guided digits are the requested class, judged by a separately
trained classifier (ddpm_jax.evaluators.digits_judge, clean images).

    python benchmarks/guidance_accuracy.py --workdir bench/guidance

Trains what is missing under --workdir (each step is skipped when its
output exists): a class-conditional digits model (configs/digits.py with
model.num_classes=10, label dropout 0.1), an unconditional one (or pass
--unconditional WORKDIR, e.g. the README's default model), and the
noise-aware guidance classifier (configs/digits_classifier.py). Then for
each classifier-free scale w and classifier-guidance scale s it draws
--per_class samples of every class and prints the judge's accuracy, one
JSON line per setting and a table last.
"""

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the trained models go.")
flags.DEFINE_string("unconditional", None, "An unconditional digits "
                    "train.py workdir to use instead of training one.")
flags.DEFINE_integer("per_class", 20, "Samples per class and setting.")
flags.DEFINE_list("cfg_scales", ["0", "1", "3"], "Classifier-free w.")
flags.DEFINE_list("classifier_scales", ["0", "1", "3", "10"],
                  "Classifier-guidance s.")
flags.DEFINE_string("sampler", "ddpm", "ddpm or ddim.")
flags.DEFINE_integer("steps", 100, "Sampler steps (0: all T).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir"])


def train_if_missing(workdir, config):
  from ddpm_jax.run import train_loop
  if not os.path.exists(os.path.join(workdir, "checkpoints")):
    start = time.time()
    train_loop.train_and_evaluate(config, workdir)
    print(f"trained {workdir} in {time.time() - start:.0f} s", flush=True)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import digits, digits_classifier  # pylint: disable=g-import-not-at-top
  from ddpm_jax.evaluators import digits_judge as judge_lib  # pylint: disable=g-import-not-at-top
  from ddpm_jax.run import classifier_training  # pylint: disable=g-import-not-at-top
  from ddpm_jax import from_config  # pylint: disable=g-import-not-at-top
  from ddpm_jax.samplers import generate
  from ddpm_jax.interop import sources  # pylint: disable=g-import-not-at-top

  cond_dir = os.path.join(FLAGS.workdir, "conditional")
  config = digits.get_config()
  config.model.num_classes = 10
  train_if_missing(cond_dir, config)
  uncond_dir = FLAGS.unconditional or os.path.join(FLAGS.workdir,
                                                   "unconditional")
  train_if_missing(uncond_dir, digits.get_config())
  clf_dir = os.path.join(FLAGS.workdir, "classifier")
  if not os.path.exists(clf_dir):
    acc = classifier_training.train_classifier(digits_classifier.get_config(),
                                               clf_dir)
    print(json.dumps({"guidance_classifier_held_out_accuracy": acc}),
          flush=True)

  judge = judge_lib.load_or_train()
  labels = np.repeat(np.arange(10), FLAGS.per_class)
  rows = []

  def measure(kind, workdir, scale, classifier=""):
    cfg, params, step = sources.load_workdir(workdir, True)
    cfg.sampling.sampler, cfg.sampling.steps = FLAGS.sampler, FLAGS.steps
    cfg.sampling.guidance, cfg.sampling.classifier = scale, classifier
    model = from_config.make_model(cfg)
    correct, start = 0, time.time()
    for k in range(10):
      cfg.sampling.label = k
      x = generate.generate(cfg, model, params, FLAGS.per_class,
                            FLAGS.per_class, seed=FLAGS.seed + 1000 * k)
      pred = np.asarray(judge_lib.predict(judge, x)).argmax(-1)
      correct += int(np.sum(pred == k))
    row = {"guidance": kind, "scale": scale, "accuracy":
           correct / len(labels), "samples": len(labels), "model_step": step,
           "sampler": FLAGS.sampler, "steps": FLAGS.steps or
           cfg.diffusion.num_timesteps, "seconds": round(time.time() - start)}
    print(json.dumps(row), flush=True)
    rows.append(row)

  for w in FLAGS.cfg_scales:
    measure("classifier-free", cond_dir, float(w))
  for s in FLAGS.classifier_scales:
    measure("classifier", uncond_dir, float(s), clf_dir)
  print(f"\n| guidance | scale | sampler | accuracy ({len(labels)} "
        f"samples) |")
  print("| --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['guidance']} | {r['scale']:g} | {r['sampler']}, "
          f"{r['steps']} steps | {r['accuracy']:.3f} |")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")


if __name__ == "__main__":
  app.run(main)
