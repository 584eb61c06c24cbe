"""Training speed: ddpm-jax's train step against a PyTorch loop of diffusers'
UNet2DModel + DDPMScheduler with the same architecture, batch and loss.

    python benchmarks/train_step.py --config tiny8
    python benchmarks/train_step.py --config tiny32
    python benchmarks/train_step.py --config cifar10 --batch 128   # GPU

Both sides do the same work per step: t ~ U{0..T-1} and noise ~ N(0, I)
per image, x_t from eq. 4, the U-Net (dropout on) predicts eps, L_simple
(eq. 14), backward, global-norm clipping when the config clips, Adam, and
the EMA update of the parameters. The JAX side is ddpm_jax.train's
jitted step (make_train_step: donated state, batch split over every
device); the batch stays on the device for both. Prints one JSON line per
side with the median images/s over --repeats alternating runs of --steps
steps each, the first call (JAX: compilation) apart, and the ratio
JAX / PyTorch last.
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
flags.DEFINE_integer("batch", None, "Batch size (default: the config's).")
flags.DEFINE_integer("steps", 10, "Train steps per timed run.")
flags.DEFINE_integer("steps_per_call", 1, "JAX: train steps per jitted "
                     "call (training.steps_per_call; --steps must be a "
                     "multiple).")
flags.DEFINE_enum("conv_backward", None, ["auto", "xla", "matmul"],
                  "Override config.model.conv_backward (ddpm_jax/models/"
                  "conv.py), e.g. 'xla' to time XLA's own gradient.")
flags.DEFINE_float("peak_tflops", None,
                   "One device's peak FLOP/s in TFLOP/s for the step's "
                   "dtype (H100/H200 SXM dense bf16: 989); prints the MFU.")


def jax_side(config, batch_size):
  """(compile seconds, first-call seconds, run()) for the JAX step."""
  import jax
  import numpy as np
  from ddpm_jax import from_config, parallel, train
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  mesh = parallel.make_mesh()
  state = train.create_train_state(config, model, tx, mesh)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  k = FLAGS.steps_per_call
  step = (train.make_train_step(config, model, tx, mesh, shardings) if k == 1
          else train.make_multi_step(config, model, tx, mesh, shardings, k))
  schedule = jax.device_put(from_config.make_schedule(config),
                            parallel.replicated(mesh))
  d = config.data
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      rng.uniform(-1, 1, (batch_size, d.image_size, d.image_size,
                          d.channels)).astype(np.float32),
      parallel.batch_sharding(mesh))
  holder = {"state": state}
  lowered = compiled = None
  # K steps per call: the same batch K times, all K steps run.
  inputs = (batch,) if k == 1 else ((batch,) * k, jax.numpy.int32(k))

  def compile_step():  # tracing and lowering counted in the compile time
    nonlocal lowered, compiled
    lowered = step.lower(holder["state"], *inputs, schedule)
    compiled = lowered.compile()

  def steps(n):
    for _ in range(max(1, n // k)):
      holder["state"], metrics = compiled(holder["state"], *inputs, schedule)
    jax.block_until_ready((holder["state"], metrics))

  compile_s = common.timed(compile_step)
  first_s = common.timed(lambda: steps(1))
  # FLOPs per step from XLA's cost analysis of the program as written (the
  # lowered module, before the backend's passes): the compiled program's
  # count misses what a backend hands to libraries (on the GPU, cuDNN's
  # convolutions: 445 of 4,209 GFLOP for the cifar10 step), so MFU comes
  # from this count. The analysis counts a loop body once, so a microbatched
  # step is counted as the same step in one pass (lowered, never compiled).
  # Both counts are one device's program, times the devices.
  counted = lowered
  micro = train.step_microbatch_size(config, mesh, shardings)
  if k > 1:  # the loop's body is counted once: count one step
    counted = train.make_train_step(config, model, tx, mesh, shardings
                                    ).lower(holder["state"], batch, schedule)
  if micro:
    one = config.copy_and_resolve_references()
    one.training.microbatch_size = 0
    counted = train.make_train_step(one, model, tx, mesh, shardings).lower(
        holder["state"], batch, schedule)
  flops = _flops(counted) * jax.device_count()
  compiled_flops = (None if micro or k > 1 else
                    _flops(compiled) * jax.device_count())
  backward = train.step_backward_plan(model, micro, mesh, in_loop=k > 1)
  return compile_s, first_s, lambda: common.timed(lambda: steps(
      FLAGS.steps)), (flops, compiled_flops), micro, backward


def _flops(program):
  """XLA's FLOP count for a jax Lowered or Compiled program (0: none)."""
  return (program.cost_analysis() or {}).get("flops", 0.0)


def torch_side(config, batch_size, device):
  """(first-call seconds, run()) for the PyTorch loop."""
  import torch
  torch.manual_seed(0)
  unet = common.torch_unet(config).to(device).train()
  scheduler = common.torch_scheduler(config)
  o = config.optim
  opt = torch.optim.Adam(unet.parameters(), lr=float(o.learning_rate),
                         betas=(float(o.beta1), float(o.beta2)),
                         eps=float(o.eps))
  ema = [p.detach().clone() for p in unet.parameters()]
  decay = float(config.training.ema_decay)
  clip = float(o.grad_clip or 0.0)
  net = torch.compile(unet) if FLAGS.torch_mode == "compile" else unet
  d = config.data
  gen = torch.Generator(device="cpu").manual_seed(0)
  x0 = (torch.rand(batch_size, d.channels, d.image_size, d.image_size,
                   generator=gen) * 2 - 1).to(device)
  alphas_cumprod = scheduler.alphas_cumprod.to(device)
  num_t = int(config.diffusion.num_timesteps)

  def one_step():
    t = torch.randint(0, num_t, (batch_size,), device=device)
    noise = torch.randn_like(x0)
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # eq. 4
    with torch.autocast(device_type=device, dtype=torch.bfloat16,
                        enabled=FLAGS.bf16):
      pred = net(x_t, t).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
      torch.nn.utils.clip_grad_norm_(unet.parameters(), clip)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(unet.parameters()), 1.0 - decay)  # pylint: disable=protected-access
    return loss

  def steps(n):
    for _ in range(n):
      loss = one_step()
    loss.item()  # waits for the device
    if device == "cuda":
      torch.cuda.synchronize()

  first_s = common.timed(lambda: steps(1))
  return first_s, lambda: common.timed(lambda: steps(FLAGS.steps))


def main(argv):
  del argv
  config, device = common.setup_from_flags()
  if FLAGS.steps_per_call < 1 or FLAGS.steps % FLAGS.steps_per_call:
    sys.exit(f"error: --steps {FLAGS.steps} must be a positive multiple of "
             f"--steps_per_call {FLAGS.steps_per_call}")
  batch = int(FLAGS.batch or config.training.batch_size)
  config.training.batch_size = batch
  if FLAGS.conv_backward:
    config.model.conv_backward = FLAGS.conv_backward
  common.say("jax: compile and a first call ...")
  compile_s, jax_first, jax_run, (flops, compiled_flops), micro, backward = (
      jax_side(config, batch))
  runs, firsts = {"jax": jax_run}, {"jax": jax_first}
  if not FLAGS.jax_only:
    common.say("torch: first call ...")
    firsts["torch"], runs["torch"] = torch_side(config, batch, device)
  times = common.alternate(runs, FLAGS.repeats)
  env = common.environment(not FLAGS.jax_only)
  out = {}
  for name, first in firsts.items():
    med = common.median(times[name])
    out[name] = {
        "side": name, "config": FLAGS.config,
        "dtype": config.model.dtype, "set": FLAGS.set, "batch": batch,
        "img_per_s": batch * FLAGS.steps / med,
        "step_ms": 1000 * med / FLAGS.steps,
        "runs_s": [round(t, 4) for t in times[name]],
        "first_call_s": round(first, 3)}
  out["jax"]["compile_s"] = round(compile_s, 3)
  # What the step runs, per layer kind ('auto' resolved as the step
  # resolves it).
  out["jax"]["conv_backward"] = backward
  out["jax"]["microbatch"] = micro  # per device; 0: one pass
  out["jax"]["steps_per_call"] = FLAGS.steps_per_call
  out["jax"]["steps_per_s"] = round(FLAGS.steps / common.median(
      times["jax"]), 2)
  if flops:
    # The FLOPs the step does on all devices; MFU is achieved / the peak
    # of every device.
    import jax
    achieved = flops / (out["jax"]["step_ms"] / 1000)
    out["jax"]["gflop_per_step"] = round(flops / 1e9, 3)
    out["jax"]["achieved_gflop_per_s"] = round(achieved / 1e9, 2)
    if FLAGS.peak_tflops:
      out["jax"]["mfu"] = round(
          achieved / (FLAGS.peak_tflops * 1e12 * jax.device_count()), 4)
  if compiled_flops:
    out["jax"]["compiled_gflop_per_step"] = round(compiled_flops / 1e9, 3)
  if "torch" in out:
    out["torch"]["mode"] = FLAGS.torch_mode
  for name in out:
    print(json.dumps(out[name]))
  print(json.dumps(env))
  if FLAGS.jax_only:
    print(f"train {FLAGS.config} batch {batch}: jax "
          f"{out['jax']['img_per_s']:.1f} img/s on {env['jax_devices']}")
    return
  ratio = out["jax"]["img_per_s"] / out["torch"]["img_per_s"]
  print(f"train {FLAGS.config} batch {batch}: jax ({env['jax_devices']}) "
        f"{out['jax']['img_per_s']:.1f} img/s, torch ({FLAGS.torch_mode}, "
        f"{device}) {out['torch']['img_per_s']:.1f} img/s, "
        f"ratio jax/torch {ratio:.2f}")


if __name__ == "__main__":
  app.run(main)
