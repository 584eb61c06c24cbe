"""Draws samples: python sample.py --workdir DIR, or --model PATH.

--workdir: a train.py run; its config and latest checkpoint (EMA parameters
unless --noema). --model: a diffusers UNet2DModel directory (config.json +
diffusion_pytorch_model.safetensors, with scheduler_config.json if present),
such as google/ddpm-cifar10-32 downloaded once, or an original TF checkpoint
(model.ckpt-NNNN, with --image_size). Runs the lax.scan sampler and writes
OUT.png (a grid) and OUT.npz (uint8 images, key 'images').
"""

import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("model", None, "A diffusers model directory or an "
                    "original TF checkpoint prefix (instead of --workdir).")
flags.DEFINE_integer("image_size", None, "Image size of a TF checkpoint "
                     "(32 for CIFAR-10, 256 for CelebA-HQ/LSUN).")
flags.DEFINE_string("variance", None, "Override the sampler variance: "
                    "fixedsmall or fixedlarge.")
flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "Sampler (default: the "
                  "config's sampling.sampler, ddpm).")
flags.DEFINE_integer("steps", None, "Reverse steps (default: the config's; "
                     "0 = all T). Fewer than T: ddim, or ddpm respaced.")
flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic).")
flags.DEFINE_bool("set_alpha_to_one", None, "DDIM: the last step goes to "
                  "abar = 1 (default), or with --noset_alpha_to_one to "
                  "abar of timestep 0.")
flags.DEFINE_bool("rederive_eps", None, "DDIM: the direction term uses the "
                  "eps of the clipped x_0 (diffusers' "
                  "use_clipped_model_output).")
flags.DEFINE_enum("spacing", None, ["leading", "trailing", "linspace",
                                    "uniform", "quadratic"],
                  "Which timesteps a reduced-step sampler visits.")
flags.DEFINE_integer("class", None, "Class-conditional models: the class of "
                     "every sample (default: sample j gets class j mod the "
                     "class count).")
flags.DEFINE_float("guidance", None, "Class-conditional models: classifier-"
                   "free guidance scale w, eps = (1 + w) eps_c - w eps_null "
                   "(diffusers' guidance_scale is 1 + w).")
flags.DEFINE_string("classifier", None, "A train_classifier.py workdir: "
                    "guide an unconditional model with its noise-aware "
                    "classifier at scale --guidance.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("batch_size", 64, "Samples drawn per sampler call.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", None, "Output prefix (default: "
                    "WORKDIR/samples/sample_seed<SEED>_step<STEP>, or "
                    "samples/<MODEL NAME>_seed<SEED> for --model).")
flags.DEFINE_integer("progressive", None, "Also record x_t and the predicted "
                     "x_0 every K steps (paper Fig. 6): writes OUT_x0.png, "
                     "OUT_xt.png, OUT.gif and OUT_trajectory.npz.")
flags.DEFINE_list("partial", None, "Held-out image indices: noise each to "
                  "step --t, then draw --num reverse chains from it (paper "
                  "Fig. 7). --workdir only.")
flags.DEFINE_list("interpolate", None, "Two held-out image indices I,J: "
                  "interpolate in x_t at step --t (paper Fig. 8). --workdir "
                  "only.")
flags.DEFINE_integer("t", None, "Forward steps for --partial and "
                     "--interpolate (0: the images themselves; default T/2).")
flags.DEFINE_integer("lambdas", 11, "--interpolate: evenly spaced lambdas "
                     "in [0, 1].")
flags.DEFINE_bool("ema", True, "Use the EMA parameters (--noema: the raw "
                  "ones).")


def _sampler_flags():
  """config.sampling fields the flags override."""
  out = {k: getattr(FLAGS, k) for k in ("sampler", "steps", "eta", "spacing",
                                        "set_alpha_to_one", "rederive_eps",
                                        "guidance", "classifier")
         if getattr(FLAGS, k) is not None}
  if FLAGS["class"].value is not None:
    out["label"] = FLAGS["class"].value
  return out


def _indices(values):
  try:
    return [int(v) for v in values]
  except ValueError:
    cli.fail(f"image indices must be integers, got {','.join(values)}")


def _figure(sampling_cli, mode):
  if mode == "progressive":
    return sampling_cli.progressive_from_workdir(
        FLAGS.workdir, FLAGS.progressive, FLAGS.num, FLAGS.seed, FLAGS.out,
        FLAGS.ema, sampler=_sampler_flags())
  if mode == "partial":
    return sampling_cli.partial_from_workdir(
        FLAGS.workdir, _indices(FLAGS.partial), FLAGS.t, FLAGS.num,
        FLAGS.seed, FLAGS.out, FLAGS.ema)
  return sampling_cli.interpolate_from_workdir(
      FLAGS.workdir, _indices(FLAGS.interpolate), FLAGS.t, FLAGS.lambdas,
      FLAGS.seed, FLAGS.out, FLAGS.ema)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if (FLAGS.workdir is None) == (FLAGS.model is None):
    cli.fail("give exactly one of --workdir (a train.py run) and --model (a "
             "diffusers model directory or TF checkpoint)")
  modes = [m for m in ("progressive", "partial", "interpolate")
           if getattr(FLAGS, m) is not None]
  if len(modes) > 1:
    cli.fail(f"give at most one of --{', --'.join(modes)}")
  if modes and FLAGS.workdir is None:
    cli.fail(f"--{modes[0]} needs --workdir (a train.py run)")
  with cli.errors_as_one_line():
    from ddpm_jax import sampling_cli  # pylint: disable=g-import-not-at-top
    if modes:
      print(f"wrote {_figure(sampling_cli, modes[0])}.*")
      return
    if FLAGS.workdir is not None:
      path = sampling_cli.sample_from_workdir(
          FLAGS.workdir, num=FLAGS.num, batch_size=FLAGS.batch_size,
          seed=FLAGS.seed, out=FLAGS.out, use_ema=FLAGS.ema,
          variance=FLAGS.variance, sampler=_sampler_flags())
    else:
      path = sampling_cli.sample_from_model(
          FLAGS.model, num=FLAGS.num, batch_size=FLAGS.batch_size,
          seed=FLAGS.seed, out=FLAGS.out, use_ema=FLAGS.ema,
          image_size=FLAGS.image_size, variance=FLAGS.variance,
          sampler=_sampler_flags())
  print(f"wrote {path}.png and {path}.npz")


if __name__ == "__main__":
  sys.exit(cli.run(main))
