"""Where the device time of a train step or of the sampler goes: traces
--calls calls with jax.profiler and prints the ops that took longest.

    python benchmarks/op_profile.py --config tiny8 --what train --out /tmp/prof
    python benchmarks/op_profile.py --config cifar10 --bf16 --what sample \\
        --num 256 --timesteps 1000 --out $OUT/profile

Compiles the program (the train step as train.py jits it, or the whole
ancestral chain in its lax.scan), calls it once to warm up, then traces
--calls calls into --out (a TensorBoard / Perfetto trace). Each device op
of the trace carries the HLO instruction it ran; the table sums their time
per instruction over the traced calls, largest first: its kind (fusion
kind, opcode or library call), how often it ran, its total and per-call
time (summed over the devices), its share of all traced op time (loops
and calls are left out: their ops are counted), and its achieved GFLOP/s
and GB/s (FLOPs of its convolutions and dots, and bytes of its operands
and result, from the compiled program: ddpm_jax/hlo_costs.py). One JSON
line per op, then one with the totals; the table last, for reading.

(Named op_profile.py, not profile.py: run as a script, this folder comes
first on sys.path, where a profile.py would stand in for the standard
library's profile module that cProfile, and PyTorch through it, import.)

On a GPU, XLA may launch kernels as CUDA graphs, which hide the ops from
the trace: benchmarks/gpu.sh runs this with
XLA_FLAGS=--xla_gpu_enable_command_buffer= (graphs off) for that reason.
"""

import collections
import glob
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

import common
from ddpm_jax import hlo_costs

FLAGS = flags.FLAGS
common.define_config_flags()
flags.DEFINE_enum("what", "train", ["train", "sample"], "The train step or "
                  "the sampler.")
flags.DEFINE_integer("batch", None, "train: batch size (default: the "
                     "config's).")
flags.DEFINE_integer("num", 64, "sample: images per call.")
flags.DEFINE_integer("timesteps", 100, "sample: steps of the chain (T).")
flags.DEFINE_integer("calls", 3, "Calls traced after the warm-up call.")
flags.DEFINE_integer("top", 25, "Rows of the table.")
flags.DEFINE_string("out", None, "Where the trace goes (a new or empty "
                    "directory).")
flags.mark_flags_as_required(["out"])

# HLO instructions whose trace events contain other ops' events.
CONTROL = ("while", "conditional", "call")


def train_program(config, batch_size):
  """(compiled step, call()) for the train step on a fixed batch."""
  import jax
  import numpy as np
  from ddpm_jax import from_config, parallel, train
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  mesh = parallel.make_mesh()
  state = train.create_train_state(config, model, tx, mesh)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step = train.make_train_step(config, model, tx, mesh, shardings)
  schedule = jax.device_put(from_config.make_schedule(config),
                            parallel.replicated(mesh))
  d = config.data
  batch = jax.device_put(
      np.random.default_rng(0).uniform(
          -1, 1, (batch_size, d.image_size, d.image_size, d.channels)
      ).astype(np.float32), parallel.batch_sharding(mesh))
  compiled = step.lower(state, batch, schedule).compile()
  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch, schedule)
    jax.block_until_ready((holder["state"], metrics))

  return compiled, call


def sample_program(config, num):
  """(compiled sampler, call()) for the whole ancestral chain, as the
  ddpm sampler runs it (one jitted lax.scan, the batch over every
  device)."""
  import jax
  from ddpm_jax import from_config, parallel, train
  from ddpm_jax.models.unet import eps_fn
  from ddpm_jax.samplers import ancestral
  model = from_config.make_model(config)
  mesh = parallel.make_mesh()
  params = parallel.on_mesh(train.create_train_state(
      config, model, from_config.make_optimizer(config)).ema_params, mesh)
  shape = (num, config.data.image_size, config.data.image_size,
           config.data.channels)
  args = (params, eps_fn(model), from_config.make_schedule(config),
          jax.random.PRNGKey(0), shape)
  options = dict(clip_denoised=True, variance="fixedsmall",
                 sharding=parallel.batch_sharding(mesh))
  # The same program as the calls below run (compiled apart from jit's
  # cache: the sampler is compiled twice here).
  compiled = ancestral.sample.lower(*args, **options).compile()
  return compiled, lambda: jax.block_until_ready(
      ancestral.sample(*args, **options))


def op_times(trace_dir, module_prefix):
  """{HLO instruction: (total microseconds, calls)} over the trace's device
  ops of the program whose module name starts with ``module_prefix``."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                    recursive=True)
  if not files:
    raise FileNotFoundError(f"no trace written under {trace_dir}")
  times = collections.defaultdict(lambda: [0.0, 0])
  for path in files:
    with gzip.open(path) as f:
      events = json.load(f)
    for e in events.get("traceEvents", []):
      args = e.get("args") or {}
      if (e.get("ph") != "X" or "hlo_op" not in args or
          not str(args.get("hlo_module", "")).startswith(module_prefix) or
          e["name"].startswith("end: ")):
        continue
      times[args["hlo_op"]][0] += float(e.get("dur", 0.0))
      times[args["hlo_op"]][1] += 1
  return dict(times)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  import jax
  if os.path.exists(FLAGS.out) and os.listdir(FLAGS.out):
    sys.exit(f"error: {FLAGS.out} exists and is not empty: give a new "
             f"--out (traces are never overwritten)")
  config = common.config_from_flags()
  if FLAGS.what == "train":
    batch = FLAGS.batch or int(config.training.batch_size)
    compiled, call = train_program(config, batch)
  else:
    config.diffusion.num_timesteps = FLAGS.timesteps
    compiled, call = sample_program(config, FLAGS.num)
  hlo = compiled.as_text()
  module = hlo.split("\n", 1)[0].split()[1].rstrip(",")
  costs = hlo_costs.instruction_costs(hlo)
  common.say("warm-up call ...")
  call()
  common.say(f"tracing {FLAGS.calls} calls into {FLAGS.out} ...")
  with jax.profiler.trace(FLAGS.out, create_perfetto_trace=True):
    wall = sum(common.timed(call) for _ in range(FLAGS.calls))
  # A loop or call's event spans the ops it runs, which have their own.
  times = {n: t for n, t in op_times(FLAGS.out, module).items()
           if costs.get(n, hlo_costs.Cost("?", 0, 0)).kind not in CONTROL}
  total_us = sum(t for t, _ in times.values())
  rows = []
  for name, (us, count) in sorted(times.items(), key=lambda kv: -kv[1][0]):
    cost = costs.get(name, hlo_costs.Cost("?", 0.0, 0.0))
    per_call = count / FLAGS.calls
    seconds = us * 1e-6
    rows.append({
        "op": name, "kind": cost.kind, "runs_per_call": per_call,
        "total_ms": round(us / 1e3, 3), "share": round(us / total_us, 4),
        "us_per_run": round(us / max(count, 1), 2),
        "gflop_per_s": round(cost.flops * count / seconds / 1e9, 2)
                       if seconds and cost.flops else None,
        "gb_per_s": round(cost.bytes * count / seconds / 1e9, 2)
                    if seconds and cost.bytes else None})
  flops = sum(c.flops * times[n][1] for n, c in costs.items() if n in times)
  summary = {"what": FLAGS.what, "config": FLAGS.config, "bf16": FLAGS.bf16,
             "module": module, "calls": FLAGS.calls,
             "wall_s_per_call": round(wall / FLAGS.calls, 4),
             "op_s_per_call": round(total_us * 1e-6 / FLAGS.calls, 4),
             "ops": len(rows), "conv_dot_gflop_per_call":
                 round(flops / FLAGS.calls / 1e9, 3),
             "trace": FLAGS.out, **common.jax_environment()}
  for row in rows[:FLAGS.top]:
    print(json.dumps(row))
  print(json.dumps(summary))
  print(f"{'op':<28} {'kind':<24} {'runs':>6} {'ms':>9} {'share':>6} "
        f"{'us/run':>9} {'GFLOP/s':>9} {'GB/s':>8}")
  for r in rows[:FLAGS.top]:
    print(f"{r['op'][:28]:<28} {r['kind'][:24]:<24} "
          f"{r['runs_per_call']:>6g} {r['total_ms']:>9.3f} "
          f"{100 * r['share']:>5.1f}% {r['us_per_run']:>9.2f} "
          f"{r['gflop_per_s'] or '':>9} {r['gb_per_s'] or '':>8}")


if __name__ == "__main__":
  from absl import app
  app.run(main)
