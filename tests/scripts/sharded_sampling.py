"""Samples on a mesh of every (simulated) device against one device.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints one JSON
line: for each sampler, the largest difference between the two and whether
the 8-device output really was split over 8 devices.
"""

import json
import sys

import jax
import numpy as np

from ddpm_jax import from_config, parallel, train
from ddpm_jax.samplers import registry
from ddpm_jax.samplers import generate
from ddpm_jax.models.unet import eps_fn
from tests.tiny_configs import tiny_digits_config


def main():
  config = tiny_digits_config(num_timesteps=10, batch_size=8, one_level=True)
  model = from_config.make_model(config)
  state = train.create_train_state(config, model,
                                   from_config.make_optimizer(config))
  params = jax.device_get(state.params)
  everything = parallel.make_mesh()
  one = parallel.make_mesh(jax.devices()[:1])
  result = {"devices": everything.size}
  for name, extra in (("ddpm", {}), ("ddpm_respaced", {"steps": 4}),
                      ("ddim", {"sampler": "ddim", "steps": 5, "eta": 0.5})):
    config.sampling.sampler = extra.get("sampler", "ddpm")
    config.sampling.steps = extra.get("steps", 0)
    config.sampling.eta = extra.get("eta", 0.0)
    # 12 samples in batches of 8 (two batches; the last one partly kept).
    wide = generate.generate(config, model, params, 12, 8, seed=3,
                             mesh=everything)
    narrow = generate.generate(config, model, params, 12, 8, seed=3,
                               mesh=one)
    # And batch 3 on one device: sample j does not depend on the batching.
    small = generate.generate(config, model, params, 12, 3, seed=3,
                              mesh=one)
    options = from_config.sampler_options(config)
    if config.sampling.sampler == "ddim":
      options["eta"] = config.sampling.eta
    x, _ = registry.get_sampler(config.sampling.sampler)(
        params, eps_fn(model), from_config.make_betas(config),
        jax.random.PRNGKey(3), (8, 8, 8, 1), mesh=everything, **options)
    result[name] = {
        "max_diff": float(np.max(np.abs(wide - narrow))),
        "max_diff_batching": float(np.max(np.abs(small - narrow))),
        "shape": list(wide.shape),
        "shards": len(x.sharding.device_set),
        "finite": bool(np.all(np.isfinite(wide))),
    }
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
