"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
by tests/test_parallel.py: N train steps on 1 device, on 8 (batch split),
and on 8 with FSDP, from the same state and batches, with SGD+momentum
behind the config's clipping and warmup; and the config's Adam on 1 and 8
devices. Prints one JSON line: per parameter array, the largest difference
to the 1-device run and the array's scale; the losses."""

import json
import re
import sys

import jax
import numpy as np
import optax

jax.config.update("jax_default_matmul_precision", "highest")

from ddpm_jax import (from_config, parallel, train)  # pylint: disable=g-import-not-at-top
from tests.tiny_configs import tiny_digits_config  # pylint: disable=g-import-not-at-top


def tiny_config():
  # One level: half the compile time of two. FSDP still splits arrays of
  # at least parallel.FSDP_MIN_SIZE elements: the time embedding's 128x128
  # kernel and the up blocks' 3x3 kernels of 64 input channels.
  config = tiny_digits_config(num_timesteps=50, batch_size=16, ema_decay=0.9,
                              one_level=True)
  config.optim.warmup_steps = 2
  return config


def run(config, devices, fsdp, batches, optimizer):
  mesh = parallel.make_mesh(devices)
  model = from_config.make_model(config)
  if optimizer == "adam":
    tx = from_config.make_optimizer(config)
  else:  # the config's optimizer with Adam swapped for SGD
    tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip),
                     optax.sgd(from_config.learning_rate_fn(config),
                               momentum=0.9))
  state = train.create_train_state(config, model, tx, mesh, fsdp)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  split = sum(1 for s in jax.tree_util.tree_leaves(shardings)
              if any(p is not None for p in s.spec))
  step = train.make_train_step(config, model, tx, mesh, shardings)
  schedule = jax.device_put(from_config.make_schedule(config),
                            parallel.replicated(mesh))
  # Compiled once: its HLO is inspected and it runs the steps.
  compiled = step.lower(state, parallel.global_batch(batches[0], mesh),
                        schedule).compile()
  losses = []
  for b in batches:
    state, metrics = compiled(state, parallel.global_batch(b, mesh),
                              schedule)
    losses.append(float(metrics["loss"]))
  return (jax.device_get(state), losses, split,
          reduced_arrays(compiled.as_text()))


def reduced_arrays(hlo):
  """How many arrays the compiled step's all-reduces sum, in all."""
  return sum(len(re.findall(r"%[\w.-]+", line.split("all-reduce(", 1)[1]
                            .split(")", 1)[0]))
             for line in hlo.splitlines() if " all-reduce(" in line)


def leaf_errors(a, b):
  """Per leaf: (largest |a - b|, largest |b|)."""
  return [(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))),
           float(np.max(np.abs(np.asarray(y, np.float64)))))
          for x, y in zip(jax.tree_util.tree_leaves(a),
                          jax.tree_util.tree_leaves(b))]


def main():
  num_steps = int(sys.argv[1])
  assert jax.device_count() == 8, jax.devices()
  config = tiny_config()
  rng = np.random.default_rng(0)
  batches = [rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
             for _ in range(num_steps)]
  result = {}
  # Adam with FSDP adds nothing that SGD with FSDP does not check: its
  # update is elementwise on the same sharded arrays.
  # dp8_micro: each device's 2 examples in 2 passes of 1
  # (train.microbatch_size), the dropout masks sliced at
  # device * 2 + pass.
  micro = config.copy_and_resolve_references()
  micro.training.microbatch_size = 1
  for optimizer, sharded in (("sgd", [("dp8", False), ("fsdp8", True),
                                      ("dp8_micro", False)]),
                             ("adam", [("dp8", False)])):
    ref, ref_losses, _, _ = run(config, jax.devices()[:1], False, batches,
                                optimizer)
    for name, fsdp in sharded:
      state, losses, split, reduced = run(
          micro if name.endswith("micro") else config, jax.devices(), fsdp,
          batches, optimizer)
      result[f"{optimizer}_{name}"] = {
          "params": leaf_errors(state.params, ref.params),
          "ema": leaf_errors(state.ema_params, ref.ema_params),
          "losses": losses, "ref_losses": ref_losses,
          "split_arrays": split, "step": int(state.step),
          "reduced_arrays": reduced, "dropout": config.model.dropout,
          "num_params": len(jax.tree_util.tree_leaves(state.params))}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
