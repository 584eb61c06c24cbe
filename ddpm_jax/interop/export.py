"""Exports a train.py run to diffusers.

  python -m ddpm_jax.interop.export --workdir workdir/cifar10 --out exported

writes OUT/config.json, OUT/diffusion_pytorch_model.safetensors and
OUT/scheduler_config.json, which ``UNet2DModel.from_pretrained(OUT)`` and
``DDPMScheduler.from_pretrained(OUT)`` load. EMA parameters unless --noema.
"""

from __future__ import annotations

import sys

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("out", None, "New (or empty) output directory.")
flags.DEFINE_bool("ema", True, "Export the EMA parameters (--noema: the raw "
                  "ones).")


def export_workdir(workdir: str, out: str, use_ema: bool = True) -> int:
  """Writes ``workdir``'s latest checkpoint as a diffusers directory;
  returns the checkpoint's step."""
  # Loaded after the flags are parsed, so that --help answers at once.
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import paths
  from ddpm_jax.interop import (ConversionError, diffusers_scheduler,
                                diffusers_unet, sources)
  paths.check_reachable(out)
  config, params, step = sources.load_workdir(workdir, use_ema)
  if config.model.self_condition:
    raise ConversionError("a self-conditioned model (model.self_condition) "
                          "has no UNet2DModel / DDPMPipeline equivalent")
  if config.model.num_classes:
    raise ConversionError("exporting a class-conditional model "
                          "(model.num_classes) is not supported yet")
  diffusers_unet.write_model_dir(
      out, params, config.model, config.data.image_size, config.data.channels,
      scheduler_config=diffusers_scheduler.scheduler_config_from_settings(
          config))
  return step


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if not FLAGS.workdir or not FLAGS.out:
    cli.fail("give --workdir (a train.py run) and --out (a new directory)")
  with cli.errors_as_one_line():
    step = export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.ema)
  print(f"wrote {FLAGS.out} (step {step}, "
        f"{'EMA' if FLAGS.ema else 'raw'} parameters)")


if __name__ == "__main__":
  sys.exit(cli.run(main))
