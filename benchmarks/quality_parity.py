"""Training-outcome parity with PyTorch: the same recipe trained by
ddpm-jax and by a plain PyTorch loop around diffusers' UNet2DModel, both
scored by this project's evaluators.

    python benchmarks/quality_parity.py --workdir bench/quality_parity

For each training seed (--seeds) it trains, where missing under --workdir:
- ``jax_seed<S>``: train.py's loop on the config (default configs/digits.py,
  ``--config.*`` overrides apply to both sides) with ``config.seed = S``;
- ``torch_seed<S>``: the same architecture as diffusers' UNet2DModel (the
  exporter's mapping), PyTorch's default initialisation from
  ``torch.manual_seed(S)``, trained on the same batches in the same order
  (``data.create_input_iter``), with t and the noise from a torch generator
  seeded with S, the same Adam, warmup (the first update at learning rate
  0), gradient clipping, dropout and EMA; the EMA weights are written as a
  diffusers model folder (what ``evaluate.py --model DIR --dataset digits``
  reads).
``--jax_init torch`` starts the ddpm-jax side from PyTorch's initial weights
of the same seed, ``--torch_init jax`` the PyTorch side from ddpm-jax's:
the initialisation ablation (use another --workdir for each setting).

Each model is scored with its EMA weights: held-out bits/dim (eq. 5; its
noise from config.seed, so both sides of a seed see the same) and the
digits score of --num samples per sampling seed (--sample_seeds; the same
sampling noise for both sides). One JSON line per model, then one per
side (mean and spread over the training seeds of each model's mean over
the sampling seeds), then the ratios jax/torch. Scores are cached in each
model's folder (``scores.json``), so a second run only adds what is
missing.
"""

import json
import os
import statistics
import sys
import time

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common, torch_reference
from ddpm_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "configs", "digits.py"),
    "The recipe both sides train (a digits config).")
flags.DEFINE_string("workdir", None, "Where the models and their scores go.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_list("sample_seeds", ["0", "1", "2", "3"], "Sampling seeds of "
                  "the digits score.")
flags.DEFINE_integer("num", 297, "Samples per digits score (297: the "
                     "held-out split's size).")
flags.DEFINE_integer("sampler_steps", 100, "Ancestral steps (respaced; "
                     "0: all T).")
flags.DEFINE_integer("bpd_num", 0, "Held-out images for bits/dim (0: all "
                     "297).")
flags.DEFINE_list("sides", ["jax", "torch"], "Which sides to train/score.")
flags.DEFINE_enum("jax_init", "jax", ["jax", "torch"], "The ddpm-jax "
                  "side's initial weights: its own (the paper's) or "
                  "PyTorch's default of the same seed.")
flags.DEFINE_enum("torch_init", "torch", ["torch", "jax"], "The PyTorch "
                  "side's initial weights: PyTorch's default or ddpm-jax's "
                  "of the same seed.")
flags.mark_flags_as_required(["workdir"])


def seed_config(seed):
  config = FLAGS.config.copy_and_resolve_references()
  config.seed = int(seed)
  return config


def train_jax(config, workdir):
  """train.py's loop; with --jax_init torch, from a step-0 checkpoint of
  PyTorch's initial weights."""
  import jax
  from ddpm_jax import checkpoints, data, from_config
  from ddpm_jax.run import train_loop
  from ddpm_jax.train.state import create_train_state
  if FLAGS.jax_init == "torch":
    model, tx = from_config.make_model(config), \
        from_config.make_optimizer(config)
    params = jax.tree_util.tree_map(
        jax.numpy.asarray, torch_reference.to_jax_params(
            torch_reference.initial_model(config), config))
    state = create_train_state(config, model, tx).replace(
        params=params, ema_params=params, opt_state=tx.init(params))
    manager = checkpoints.checkpoint_manager(workdir)
    checkpoints.save(manager, 0, state, data.Position().to_json())
    manager.wait_until_finished()
    manager.close()
  train_loop.train_and_evaluate(config, workdir)


def load_params(side, path):
  """The EMA parameters of the model at ``path``."""
  from ddpm_jax.interop import diffusers_unet, sources
  if side == "jax":
    return sources.load_workdir(path)[1]
  return diffusers_unet.read_model_dir(path)[3]


def scores(side, path, config):
  """{'bpd': ..., 'digits_fid': [per sampling seed], 'digits_fid_mean'} of
  the model at ``path``, scored with the recipe ``config`` on both sides
  (the bits/dim noise comes from config.seed), from the model's
  ``scores.json`` where already computed."""
  from ddpm_jax.run import evaluate
  cache = os.path.join(path, "scores.json")
  done = json.load(open(cache)) if os.path.exists(cache) else {}
  fid_key = f"digits_fid_num{FLAGS.num}_steps{FLAGS.sampler_steps}"
  bpd_key = f"bpd_num{FLAGS.bpd_num}"
  fids = done.setdefault(fid_key, {})
  params = load_params(side, path)
  if bpd_key not in done:
    done[bpd_key] = float(evaluate.bits_per_dim(
        config.copy_and_resolve_references(), params, None, None,
        FLAGS.bpd_num, 64)["total"])
  for s in FLAGS.sample_seeds:
    if s not in fids:
      fids[s] = float(evaluate.quality(
          config.copy_and_resolve_references(), params, None, "digits",
          FLAGS.num, int(s), FLAGS.num,
          {"sampler": "ddpm", "steps": FLAGS.sampler_steps},
          None)["digits_fid"])
  with open(cache, "w") as f:
    json.dump(done, f, indent=1)
  per_seed = [fids[s] for s in FLAGS.sample_seeds]
  return {"bpd": done[bpd_key], "digits_fid": per_seed,
          "digits_fid_mean": statistics.mean(per_seed)}


def spread(xs):
  return {"mean": statistics.mean(xs),
          "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
          "min": min(xs), "max": max(xs)}


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if FLAGS.config.data.name != "digits":
    cli.fail("--config must be a digits config (the digits score is "
             "offline)")
  if "torch" in FLAGS.sides or "torch" in (FLAGS.jax_init,
                                           FLAGS.torch_init):
    common.require_reference()
  cli.prepare_jax()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  settings = {"config": json.loads(FLAGS.config.to_json()),
              "jax_init": FLAGS.jax_init, "torch_init": FLAGS.torch_init}
  record = os.path.join(FLAGS.workdir, "settings.json")
  if os.path.exists(record):
    if json.load(open(record)) != settings:
      cli.fail(f"{FLAGS.workdir} holds models of other settings "
               f"({record}): give another --workdir")
  else:
    with open(record, "w") as f:
      json.dump(settings, f, indent=1)
  per_side = {}
  for side in FLAGS.sides:
    for seed in FLAGS.seeds:
      path = os.path.join(FLAGS.workdir, f"{side}_seed{seed}")
      config = seed_config(seed)
      done = os.path.exists(os.path.join(
          path, "checkpoints" if side == "jax" else "config.json"))
      if not done:
        start = time.time()
        common.say(f"training {path}")
        if side == "jax":
          train_jax(config, path)
        else:
          torch_reference.train(config, path, init=FLAGS.torch_init)
        common.say(f"trained {path} in {time.time() - start:.0f} s")
      result = scores(side, path, config)
      result.update(side=side, seed=int(seed))
      print(json.dumps(result), flush=True)
      per_side.setdefault(side, []).append(result)
  summary = {}
  for side, results in per_side.items():
    summary[side] = {
        "bpd": spread([r["bpd"] for r in results]),
        "digits_fid": spread([r["digits_fid_mean"] for r in results]),
        "seeds": len(results)}
    print(json.dumps({"side": side, **summary[side]}))
  print(json.dumps({**common.environment(
      with_torch="torch" in per_side), "settings": {
          k: v for k, v in settings.items() if k != "config"},
                    "num": FLAGS.num, "sampler_steps": FLAGS.sampler_steps,
                    "sample_seeds": FLAGS.sample_seeds}))
  if set(summary) == {"jax", "torch"}:
    j, t = summary["jax"], summary["torch"]
    print(f"ratio jax/torch: digits FID "
          f"{j['digits_fid']['mean'] / t['digits_fid']['mean']:.3f} "
          f"(jax {j['digits_fid']['mean']:.1f} +- "
          f"{j['digits_fid']['std']:.1f}, torch "
          f"{t['digits_fid']['mean']:.1f} +- {t['digits_fid']['std']:.1f}), "
          f"bits/dim {j['bpd']['mean'] / t['bpd']['mean']:.4f} "
          f"(jax {j['bpd']['mean']:.3f}, torch {t['bpd']['mean']:.3f})")


if __name__ == "__main__":
  sys.exit(cli.run(main))
