"""Golden outputs of a fixed tiny run, recorded before the package was
reorganised (issue 27), so that a change of layout that changes a result
fails here: 3 train steps (every leaf of the state), 8 ancestral and 8
DDIM samples with a fixed seed, and bits/dim of 16 held-out digits.

On the machine kind that recorded them (the same CPU model, jax and jaxlib)
every array must be bit-identical (SHA-256 of its bytes). On another CPU
model XLA may pick other kernels (AVX-512 vs AVX2 convolutions sum in
another order), so there the values are compared instead: the samples and
bits/dim element by element, each state leaf by its L1/L2 norms and first
values, at rtol 1e-4 (3 Adam steps turn float32 rounding of near-zero
gradients into larger relative moves of single weights; the norms stay
within 1e-5 where measured). Record anew with `python -m tests.test_golden`
only for a change meant to alter these results, and say so in the commit.

The run happens in a process of its own at XLA's default CPU optimization
level (the rest of the suite compiles at a lower one, tests/processes.py):
these are the bits the default build gives.
"""

import hashlib
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import processes
from tests.tiny_configs import tiny_digits_config

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "tiny_run.json")


def golden_config():
  config = tiny_digits_config(num_timesteps=20, batch_size=8,
                              num_samples=8, eval_examples=16,
                              eval_batch_size=16)
  config.model.ch = 16
  config.model.num_groups = 8
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 1
  return config


def machine():
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"cpu": cpu, "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def run_golden():
  """{name: float32/float64 NumPy array} of the tiny run."""
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import data, from_config, parallel, train
  from ddpm_jax.evaluators import bpd
  from ddpm_jax.samplers import generate
  config = golden_config()
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  schedule = from_config.make_schedule(config)
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  state = train.create_train_state(config, model, tx, mesh)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step = train.make_train_step(config, model, tx, mesh, shardings)
  batches = data.create_input_iter(config)
  sched = jax.device_put(schedule, parallel.replicated(mesh))
  for _ in range(3):
    state, _ = step(state, jnp.asarray(next(batches)[0]), sched)
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    out["state" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  # A perturbed copy of the trained weights, so that the network's output
  # is far from the (zero-initialised) start and every layer counts.
  leaves, treedef = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [
      p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  out["ancestral"] = generate.generate(config, model, params, 8, 8, seed=3,
                                       mesh=mesh)
  config.sampling.sampler = "ddim"
  config.sampling.steps = 5
  out["ddim"] = generate.generate(config, model, params, 8, 8, seed=3,
                                  mesh=mesh)
  bits = bpd.evaluate(config, model, params, schedule)
  out["bpd"] = np.asarray([bits["total"]], np.float64)
  return out


def digest(a):
  a = np.ascontiguousarray(a)
  return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() +
                        a.tobytes()).hexdigest()


def summary(a):
  a = np.asarray(a, np.float64).ravel()
  return {"l1": float(np.abs(a).sum()), "l2": float(np.sqrt((a * a).sum())),
          "head": a[:4].tolist()}


def results():
  """The run's digests, and the values or summaries the comparison on
  another machine uses (JSON-ready)."""
  out = run_golden()
  small = ("ancestral", "ddim", "bpd")
  return {"machine": machine(),
          "sha256": {k: digest(v) for k, v in out.items()},
          "values": {k: np.asarray(out[k], np.float64).ravel().tolist()
                     for k in small},
          "summary": {k: summary(v) for k, v in out.items()
                      if k not in small}}


def record():
  golden = results()
  with open(GOLDEN, "w") as f:
    json.dump(golden, f, indent=1, sort_keys=True)
  print(f"wrote {GOLDEN} ({len(golden['sha256'])} arrays)")


@pytest.mark.slow
def test_tiny_run_matches_the_golden_outputs():
  with open(GOLDEN) as f:
    golden = json.load(f)
  got = processes.call_at_default_level("tests.test_golden", "results")
  assert sorted(got["sha256"]) == sorted(golden["sha256"])
  if got["machine"] == golden["machine"]:
    changed = [k for k, v in got["sha256"].items()
               if v != golden["sha256"][k]]
    assert not changed, f"not bit-identical: {changed[:5]}"
    return
  for k, want in golden["values"].items():
    np.testing.assert_allclose(got["values"][k], want, rtol=1e-4,
                               atol=1e-6, err_msg=k)
  for k, want in golden["summary"].items():
    for stat in ("l1", "l2", "head"):
      np.testing.assert_allclose(got["summary"][k][stat], want[stat],
                                 rtol=1e-4, atol=1e-7, err_msg=f"{k} {stat}")


if __name__ == "__main__":
  record()
