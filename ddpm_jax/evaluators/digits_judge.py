"""The offline judge of generated digits: a small CNN trained on the clean
digits training split, deterministic and quick on a CPU, cached on disk.

It is separate from the guidance classifier (:mod:`ddpm_jax.models.
classifier`, trained on noisy x_t): samples guided by one are judged by the
other. :func:`load_or_train` returns its parameters; :func:`predict` the
class probabilities of images in [-1, 1].
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax import data, paths

VERSION = 1  # bump when the architecture or the training changes
STEPS, BATCH, SEED = 800, 128, 0


class DigitsCNN(nn.Module):
  """[B, 8, 8, 1] in [-1, 1] -> 10 logits (and 128 features)."""

  @nn.compact
  def __call__(self, x, features: bool = False):
    h = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
    h = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv2")(h))
    h = nn.relu(nn.Conv(64, (3, 3), name="conv3")(h))
    h = nn.relu(nn.Dense(128, name="fc")(h.reshape(h.shape[0], -1)))
    if features:
      return h
    return nn.Dense(10, name="head")(h)


MODEL = DigitsCNN()


def _loss(params, x, y):
  logits = MODEL.apply({"params": params}, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@functools.partial(jax.jit, static_argnames=("tx",))
def _step(params, opt_state, x, y, *, tx):
  grads = jax.grad(_loss)(params, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train(seed: int = SEED, steps: int = STEPS) -> Dict[str, Any]:
  """Trains on the digits training split (random shifts of up to one
  pixel); deterministic in ``seed``."""
  x = data.digits_images("train")
  y = data.digits_labels("train")
  params = MODEL.init(jax.random.PRNGKey(seed), x[:1])["params"]
  tx = optax.adam(2e-3)
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  for _ in range(steps):
    idx = rng.choice(len(x), BATCH, replace=False)
    dy, dx = rng.integers(0, 3, 2)
    batch = padded[idx, dy:dy + 8, dx:dx + 8]
    params, opt_state = _step(params, opt_state, jnp.asarray(batch),
                              jnp.asarray(y[idx]), tx=tx)
  return jax.device_get(params)


def _cache_path(cache_dir: Optional[str]) -> str:
  cache_dir = cache_dir or os.environ.get(
      "DDPM_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                     "ddpm_jax"))
  return paths.join(cache_dir, f"digits_classifier_v{VERSION}.npz")


def load_or_train(cache_dir: Optional[str] = None) -> Dict[str, Any]:
  """The judge's params: read from the cache (``$DDPM_JAX_CACHE`` or
  ``~/.cache/ddpm_jax``; plain arrays, no pickle), or trained and cached
  when the entry is missing or unreadable."""
  path = _cache_path(cache_dir)
  template = jax.eval_shape(lambda: MODEL.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"])
  leaves, tree = jax.tree_util.tree_flatten(template)
  if paths.exists(path):
    try:
      saved = paths.load_npz(path)
      arrays = [saved[f"a{i}"] for i in range(len(leaves))]
      if all(a.shape == l.shape for a, l in zip(arrays, leaves)):
        return jax.tree_util.tree_unflatten(tree, arrays)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass  # a damaged cache entry: train again and replace it
  params = train()
  paths.save_cache_npz(path, "the digits judge",
                       **{f"a{i}": np.asarray(a) for i, a in
                          enumerate(jax.tree_util.tree_leaves(params))})
  return params


@jax.jit
def predict(params: Dict[str, Any], images: jnp.ndarray) -> jnp.ndarray:
  """Class probabilities [B, 10] of 8x8 images in [-1, 1]."""
  return jax.nn.softmax(MODEL.apply({"params": params},
                                    jnp.asarray(images, jnp.float32)), -1)
