"""Draws samples: python sample.py --workdir DIR, or --model PATH.

--workdir: a train.py run; its config and latest checkpoint (EMA parameters
unless --noema). --model: a diffusers UNet2DModel directory (config.json +
diffusion_pytorch_model.safetensors, with scheduler_config.json if present),
a Hugging Face Hub repo id such as google/ddpm-cifar10-32 (fetched into
the Hub cache; --revision), or an original TF checkpoint (model.ckpt-NNNN,
with --image_size). Runs the lax.scan sampler and writes OUT.png (a grid),
OUT.npz (uint8 images, key 'images') and OUT.json (the settings), never
over an existing output (see --out). With --multihost (as train.py) every
process of a multi-host job runs the same command: each batch is split
over every device of every host, and process 0 writes the outputs.
"""

import sys

from absl import flags

from ddpm_jax import cli
from ddpm_jax import paths
from ddpm_jax.run import flag_checks
from ddpm_jax.run import flags as run_flags
from ddpm_jax.run import multihost_flags

FLAGS = flags.FLAGS
run_flags.define_source_flags()
run_flags.define_sampler_flags()
multihost_flags.define_multihost_flags()
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("batch_size", 64, "Samples drawn per sampler call.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", None, "Output prefix; an existing one is an "
                    "error (outputs are never overwritten). Default: "
                    "WORKDIR/samples/sample_seed<SEED>_step<STEP><SETTINGS>, "
                    "or MODEL_FOLDER/samples/sample_seed<SEED><SETTINGS> for "
                    "--model, where <SETTINGS> names each sampling option "
                    "that differs from configs/default.py (e.g. _ddim50_"
                    "trailing_eta0.5); a default name already taken gets "
                    "_2, _3 ... OUT.json records every setting.")
flags.DEFINE_bool("profile", False, "Also write a jax.profiler trace of "
                  "the sampling (its compile included) into OUT_profile/, "
                  "for TensorBoard's profile plugin.")
flags.DEFINE_integer("progressive", None, "Instead of the sample grid, "
                     "record x_t and the predicted x_0 every K steps (paper "
                     "Fig. 6): OUT_x0.png, OUT_xt.png, OUT.gif and "
                     "OUT_trajectory.npz, OUT by default WORKDIR/samples/"
                     "progressive<K>_seed<SEED>_step<STEP><SETTINGS>.")
flags.DEFINE_list("partial", None, "Held-out image indices: noise each to "
                  "step --t, then draw --num reverse chains from it (paper "
                  "Fig. 7): OUT.png and OUT.npz, OUT by default "
                  "WORKDIR/samples/partial_t<T>_seed<SEED>_step<STEP>. "
                  "--workdir only.")
flags.DEFINE_list("interpolate", None, "Two held-out image indices I,J: "
                  "interpolate in x_t at step --t (paper Fig. 8): OUT.png "
                  "and OUT.npz, OUT by default WORKDIR/samples/interpolate_"
                  "I_J_t<T>_seed<SEED>_step<STEP>. --workdir only.")
flags.DEFINE_integer("t", None, "Forward steps for --partial and "
                     "--interpolate (0: the images themselves; default T/2).")
flags.DEFINE_integer("lambdas", 11, "--interpolate: evenly spaced lambdas "
                     "in [0, 1].")
def _indices(values):
  try:
    return [int(v) for v in values]
  except ValueError:
    cli.fail(f"image indices must be integers, got {','.join(values)}")


def _figure(mode):
  from ddpm_jax.run import sampling  # pylint: disable=g-import-not-at-top
  if mode == "progressive":
    return sampling.progressive_from_workdir(
        FLAGS.workdir, FLAGS.progressive, FLAGS.num, FLAGS.seed, FLAGS.out,
        FLAGS.ema, sampler=run_flags.sampler_overrides(),
        dtype=FLAGS.dtype)
  if mode == "partial":
    return sampling.partial_from_workdir(
        FLAGS.workdir, _indices(FLAGS.partial), FLAGS.t, FLAGS.num,
        FLAGS.seed, FLAGS.out, FLAGS.ema, dtype=FLAGS.dtype)
  return sampling.interpolate_from_workdir(
      FLAGS.workdir, _indices(FLAGS.interpolate), FLAGS.t, FLAGS.lambdas,
      FLAGS.seed, FLAGS.out, FLAGS.ema, dtype=FLAGS.dtype)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  run_flags.check_one_source()
  modes = [m for m in ("progressive", "partial", "interpolate")
           if getattr(FLAGS, m) is not None]
  if len(modes) > 1:
    cli.fail(f"give at most one of --{', --'.join(modes)}")
  if modes and FLAGS.workdir is None:
    cli.fail(f"--{modes[0]} needs --workdir (a train.py run)")
  if modes and FLAGS.profile:
    cli.fail(f"--profile goes with the sample grid, not --{modes[0]}")
  if modes and FLAGS.multihost:
    cli.fail(f"--multihost goes with the sample grid, not --{modes[0]}")
  # Before JAX and the model: the counts and the paths.
  flag_checks.counts(FLAGS.num, FLAGS.batch_size)
  if FLAGS.interpolate is not None:
    flag_checks.interpolation(_indices(FLAGS.interpolate), FLAGS.lambdas)
  if FLAGS.partial is not None:
    flag_checks.partial(_indices(FLAGS.partial))
  flag_checks.trained_workdir(FLAGS.workdir)
  flag_checks.out_folder(FLAGS.out, paths.join(FLAGS.workdir, "samples")
                         if FLAGS.workdir is not None else None)
  cli.prepare_jax()
  multihost_flags.start_multihost()
  from ddpm_jax.run import sampling  # pylint: disable=g-import-not-at-top
  with cli.errors_as_one_line():
    if modes:
      print(f"wrote {_figure(modes[0])}.*")
      return
    if FLAGS.workdir is not None:
      path = sampling.sample_from_workdir(
          FLAGS.workdir, num=FLAGS.num, batch_size=FLAGS.batch_size,
          seed=FLAGS.seed, out=FLAGS.out, use_ema=FLAGS.ema,
          variance=FLAGS.variance, sampler=run_flags.sampler_overrides(),
          dtype=FLAGS.dtype, memory_check=FLAGS.memory_check,
          profile=FLAGS.profile)
    else:
      path = sampling.sample_from_model(
          FLAGS.model, num=FLAGS.num, batch_size=FLAGS.batch_size,
          seed=FLAGS.seed, out=FLAGS.out, use_ema=FLAGS.ema,
          image_size=FLAGS.image_size, variance=FLAGS.variance,
          sampler=run_flags.sampler_overrides(), dtype=FLAGS.dtype,
          memory_check=FLAGS.memory_check, profile=FLAGS.profile,
          revision=FLAGS.revision)
  if path is None:  # another process of the job wrote them
    return
  print(f"wrote {path}.png, {path}.npz and {path}.json" +
        (f", and the profile in {path}_profile/" if FLAGS.profile else ""))


if __name__ == "__main__":
  sys.exit(cli.run(main))
