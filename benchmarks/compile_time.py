"""Where the train step's compilation time goes: the step itself and its
parts compiled alone, each with the persistent compilation cache off.

  python benchmarks/compile_time.py --config tiny8
  python benchmarks/compile_time.py --config cifar10 --batch 128 --bf16

Parts: 'forward' (the U-Net in training mode, dropout on), 'gradient' (the
gradient of a mean square of its output with respect to the parameters),
'update' (:func:`ddpm_jax.train.step.apply_gradients`, what the step runs
after the gradient: clipping, Adam, the parameter update, the EMA and the
gradient's norm over every parameter array), each jitted for one device
with one device's share of the batch; 'step' is
:func:`ddpm_jax.train.step.make_train_step` on every device, as train.py
compiles it. One JSON line per part (seconds to lower and to compile, XLA's
fusions and instructions after its passes), one line with the machine and
versions, and the summary last. Times nothing that runs: the speed
benchmarks are train_step.py and sampling.py.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags

import common

FLAGS = flags.FLAGS
common.define_config_flags()
flags.DEFINE_integer("batch", None, "Batch size (default: the config's).")


def compile_stats(name, jitted, *args):
  """{lower_s, compile_s, fusions, instructions} of the jitted function
  ``jitted`` for ``args`` (saying on stderr that part ``name`` compiles)."""
  common.say(f"compiling {name} ...")
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  text = lowered.compile().as_text()
  done = time.perf_counter()
  return {"lower_s": round(lowered_at - start, 2),
          "compile_s": round(done - lowered_at, 2),
          "fusions": len(re.findall(r"\sfusion\(", text)),
          "instructions": len(re.findall(r"^\s+(?:ROOT )?%\S+ = ", text,
                                         re.M))}


def parts(config, batch_size):
  """[(part name, stats)] for the config at ``batch_size``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ddpm_jax import from_config, parallel, train
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  mesh = parallel.make_mesh()
  d = config.data
  shape = (batch_size, d.image_size, d.image_size, d.channels)
  per_device = (max(1, batch_size // mesh.size),) + shape[1:]
  x = jnp.zeros(per_device, jnp.float32)
  t = jnp.zeros(per_device[:1], jnp.int32)
  key = jax.random.PRNGKey(0)
  state = train.create_train_state(config, model, tx)

  def forward(params):
    return model.apply({"params": params}, x, t, train=True,
                       rngs={"dropout": key})

  def gradient(params):
    return jax.grad(lambda p: jnp.mean(jnp.square(forward(p))))(params)

  def update(state, grads):
    return train.apply_gradients(
        state, grads, jnp.zeros((), jnp.float32), tx=tx,
        ema_decay=float(config.training.ema_decay),
        skip_nonfinite=bool(config.training.get("skip_nonfinite", False)))

  out = [("forward", compile_stats("forward", jax.jit(forward),
                                   state.params)),
         ("gradient", compile_stats("gradient", jax.jit(gradient),
                                    state.params)),
         ("update", compile_stats("update", jax.jit(update), state,
                                  state.params))]
  placed = train.create_train_state(config, model, tx, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, placed)
  step = train.make_train_step(config, model, tx, mesh, shardings)
  schedule = jax.device_put(from_config.make_schedule(config),
                            parallel.replicated(mesh))
  batch = jax.device_put(np.zeros(shape, np.float32),
                         parallel.batch_sharding(mesh))
  out.append(("step", {
      **compile_stats("the train step", step, placed, batch, schedule),
      "param_arrays": len(jax.tree_util.tree_leaves(placed.params))}))
  return out


def main(argv):
  del argv
  config = common.config_from_flags()
  import jax
  # A cache hit would time a file read, not the compiler.
  jax.config.update("jax_enable_compilation_cache", False)
  batch = FLAGS.batch or config.training.batch_size
  results = parts(config, batch)
  for name, stats in results:
    print(json.dumps({"part": name, "config": FLAGS.config, "batch": batch,
                      "bf16": FLAGS.bf16, **stats}), flush=True)
  print(json.dumps(common.jax_environment()))
  s = dict(results)
  print(f"compile seconds: step {s['step']['compile_s']:.1f} (alone: "
        f"forward {s['forward']['compile_s']:.1f}, gradient "
        f"{s['gradient']['compile_s']:.1f}, update "
        f"{s['update']['compile_s']:.1f})")


if __name__ == "__main__":
  app.run(main)
