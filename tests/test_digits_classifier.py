"""The digits judge: accurate on held-out digits, cached without pickle,
retrained when its cache entry is damaged."""

import os

import numpy as np
import pytest

from ddpm_jax import data
from ddpm_jax.evaluators import digits_judge


@pytest.mark.slow
def test_judge_is_accurate_and_cached(tmp_path):
  params = digits_judge.load_or_train(str(tmp_path))
  x, y = data.digits_images("test"), data.digits_labels("test")
  probs = np.asarray(digits_judge.predict(params, x))
  assert probs.shape == (len(x), 10)
  accuracy = float(np.mean(probs.argmax(-1) == y))
  assert accuracy >= 0.97, accuracy
  cached = digits_judge.load_or_train(str(tmp_path))
  for a, b in zip(jax_leaves(params), jax_leaves(cached)):
    np.testing.assert_array_equal(a, b)
  # A damaged entry is replaced by a fresh training run (same seed).
  path = os.path.join(str(tmp_path), os.listdir(str(tmp_path))[0])
  with open(path, "wb") as f:
    f.write(b"not a zip file")
  again = digits_judge.load_or_train(str(tmp_path))
  for a, b in zip(jax_leaves(params), jax_leaves(again)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def jax_leaves(tree):
  import jax
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]
