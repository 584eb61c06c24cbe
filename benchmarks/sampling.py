"""Sampling speed: ddpm-jax's ancestral sampler (Algorithm 2 in one
jitted lax.scan) against diffusers' DDPMPipeline with the same U-Net
architecture, image count and number of steps.

    python benchmarks/sampling.py --config tiny8
    python benchmarks/sampling.py --config tiny32
    python benchmarks/sampling.py --config cifar10 --num 256 --timesteps 1000  # GPU
    python benchmarks/sampling.py --config cifar10 --num 256 --timesteps 1000 \
        --bf16 --jax_only   # the GPU goal's absolute time, JAX alone
    python benchmarks/sampling.py --config tiny8 --timesteps 1000 --ticks
        # the cost of the in-scan progress ticks (sample.py on a terminal)

Both sides run the full chain of --timesteps steps (the schedule is the
config's linear one over that many steps; the weights are the fresh
initialisation, which costs the same as trained ones), clip x_0 to
[-1, 1] and use the fixed-small variance, as DDPMPipeline's default
scheduler does. The JAX batch is split over every device. Prints one JSON
line per side with the median seconds over --repeats alternating runs,
the first call (JAX: compilation) apart, and the ratio JAX / PyTorch in
speed last.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags

import common

FLAGS = flags.FLAGS
common.define_shared_flags()
flags.DEFINE_integer("num", 64, "Images per run (one batch).")
flags.DEFINE_integer("timesteps", 100, "Steps of the chain (T).")
flags.DEFINE_bool("ticks", False, "Instead of PyTorch: the JAX chain with "
                  "its in-scan progress ticks (every ceil(T/TICKS) steps, as "
                  "sample.py on a terminal) against the plain chain.")
flags.DEFINE_integer("ticks_every", 0, "--ticks every this many steps "
                     "(0: as sample.py).")


def jax_side(config, num, progress_every=0):
  """(first-call seconds, run()) for the JAX sampler (ticking the host
  every ``progress_every`` steps from inside the scan)."""
  import jax
  from ddpm_jax import from_config, parallel, train
  from ddpm_jax.models.unet import eps_fn
  from ddpm_jax.samplers.registry import get_sampler
  model = from_config.make_model(config)
  params = train.create_train_state(
      config, model, from_config.make_optimizer(config)).ema_params
  apply_fn, betas = eps_fn(model), from_config.make_betas(config)
  draw, mesh = get_sampler("ddpm"), parallel.make_mesh()
  # On the devices before timing, as the PyTorch U-Net is (and as
  # generate.generate places them once for all its batches).
  params = parallel.on_mesh(params, mesh)
  shape = (num, config.data.image_size, config.data.image_size,
           config.data.channels)

  def run():
    x, _ = draw(params, apply_fn, betas, jax.random.PRNGKey(0), shape,
                variance="fixedsmall", clip_denoised=True, mesh=mesh,
                progress_every=progress_every)
    jax.block_until_ready(x)

  return common.timed(run), lambda: common.timed(run)


def torch_side(config, num, device):
  """(first-call seconds, run()) for DDPMPipeline."""
  import torch
  from diffusers import DDPMPipeline
  torch.manual_seed(0)
  unet = common.torch_unet(config).to(device).eval()
  if FLAGS.torch_mode == "compile":
    unet = torch.compile(unet)
  pipe = DDPMPipeline(unet=unet, scheduler=common.torch_scheduler(config))
  pipe.set_progress_bar_config(disable=True)
  steps = int(config.diffusion.num_timesteps)

  def run():
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.autocast(device_type=device, dtype=torch.bfloat16,
                        enabled=FLAGS.bf16):
      pipe(batch_size=num, generator=gen, num_inference_steps=steps,
           output_type="np")
    if device == "cuda":
      torch.cuda.synchronize()

  return common.timed(run), lambda: common.timed(run)


def main(argv):
  del argv
  config, device = common.setup_from_flags()
  config.diffusion.num_timesteps = FLAGS.timesteps
  runs, firsts = {}, {}
  common.say("jax: first call (compiles, then samples) ...")
  firsts["jax"], runs["jax"] = jax_side(config, FLAGS.num)
  from ddpm_jax.samplers import scan_progress
  every = (FLAGS.ticks_every or
           -(-FLAGS.timesteps // scan_progress.TICKS))
  if FLAGS.ticks:
    common.say(f"jax with a progress tick every {every} steps: first call "
               f"...")
    firsts["jax_ticks"], runs["jax_ticks"] = jax_side(config, FLAGS.num,
                                                      every)
  elif not FLAGS.jax_only:
    common.say("torch: first call ...")
    firsts["torch"], runs["torch"] = torch_side(config, FLAGS.num, device)
  times = common.alternate(runs, FLAGS.repeats)
  out = {}
  for name, first in firsts.items():
    med = common.median(times[name])
    out[name] = {"side": name, "config": FLAGS.config,
                 "dtype": config.model.dtype, "set": FLAGS.set,
                 "num": FLAGS.num,
                 "timesteps": FLAGS.timesteps, "median_s": round(med, 4),
                 "img_per_s": FLAGS.num / med,
                 "runs_s": [round(t, 4) for t in times[name]],
                 "first_call_s": round(first, 3)}
  # The first JAX call compiles, then samples: compilation is the excess.
  for name in ("jax", "jax_ticks"):
    if name in out:
      out[name]["compile_s"] = round(firsts[name] - out[name]["median_s"], 3)
  if "torch" in out:
    out["torch"]["mode"] = FLAGS.torch_mode
  for name in out:
    print(json.dumps(out[name]))
  env = common.environment(not (FLAGS.jax_only or FLAGS.ticks))
  print(json.dumps(env))
  if FLAGS.ticks:
    cost = out["jax_ticks"]["median_s"] / out["jax"]["median_s"] - 1
    print(f"sample {FLAGS.config} {FLAGS.num} images x {FLAGS.timesteps} "
          f"steps on {env['jax_devices']}: plain {out['jax']['median_s']:.3f}"
          f" s, ticking every {every} steps "
          f"{out['jax_ticks']['median_s']:.3f} s: {100 * cost:+.2f}%")
    return
  if FLAGS.jax_only:
    print(f"sample {FLAGS.config} {FLAGS.num} images x {FLAGS.timesteps} "
          f"steps: jax {out['jax']['median_s']:.2f} s on "
          f"{env['jax_devices']}")
    return
  ratio = out["torch"]["median_s"] / out["jax"]["median_s"]
  print(f"sample {FLAGS.config} {FLAGS.num} images x {FLAGS.timesteps} "
        f"steps: jax ({env['jax_devices']}) {out['jax']['median_s']:.2f} s, "
        f"torch ({FLAGS.torch_mode}, {device}) "
        f"{out['torch']['median_s']:.2f} s, "
        f"ratio jax/torch (speed) {ratio:.2f}")


if __name__ == "__main__":
  app.run(main)
