"""Exports a train.py run to diffusers.

  python -m ddpm_jax.interop.export --workdir workdir/cifar10 [--out DIR]

writes OUT/config.json, OUT/diffusion_pytorch_model.safetensors and
OUT/scheduler_config.json, which ``UNet2DModel.from_pretrained(OUT)`` and
``DDPMScheduler.from_pretrained(OUT)`` load (OUT: by default WORKDIR/diffusers_step<STEP>, with _raw for
--noema; never an existing non-empty directory). EMA parameters unless
--noema.
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple

from absl import flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_string("out", None, "New (or empty) output directory "
                    "(default: WORKDIR/diffusers_step<STEP>, _raw appended "
                    "for --noema).")
flags.DEFINE_bool("ema", True, "Export the EMA parameters (--noema: the raw "
                  "ones).")


def export_workdir(workdir: str, out: Optional[str] = None,
                   use_ema: bool = True) -> Tuple[int, str]:
  """Writes ``workdir``'s latest checkpoint as a diffusers directory
  (``out``, or WORKDIR/diffusers_step<STEP>); returns (the checkpoint's
  step, the directory)."""
  # Loaded after the flags are parsed, so that --help answers at once.
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import paths
  from ddpm_jax.interop import (ConversionError, diffusers_scheduler,
                                diffusers_unet, sources)
  if out is not None:
    paths.check_reachable(out)
  config, params, step = sources.load_workdir(workdir, use_ema)
  out = out or paths.join(workdir,
                          f"diffusers_step{step}{'' if use_ema else '_raw'}")
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
  return step, out


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if not FLAGS.workdir:
    cli.fail("give --workdir (a train.py run)")
  cli.prepare_jax()
  with cli.errors_as_one_line():
    step, out = export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.ema)
  print(f"wrote {out} (step {step}, "
        f"{'EMA' if FLAGS.ema else 'raw'} parameters)")


if __name__ == "__main__":
  sys.exit(cli.run(main))
