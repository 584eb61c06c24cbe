"""The offline sample-quality score of the default dataset (8x8 digits),
for machines without the Inception weights or a network.

"Digits FID": the Fréchet distance (:func:`ddpm_jax.evaluators.metrics.
frechet_distance`) between the 128-d hidden features of the digits judge
(:mod:`ddpm_jax.evaluators.digits_judge`, a CNN trained on the clean training
split) for the samples and for the held-out test split (297 images). Also
the judge's mean confidence (max class probability) on the samples and
the Inception-Score-like exp(E KL(p(y|x) || p(y))) of its predictions
(at most 10 for 10 balanced, confident classes).

Like FID it is biased upwards for few samples: compare scores computed
from the same number of samples.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import data
from ddpm_jax.evaluators import digits_judge, metrics, shares


@jax.jit
def _features_and_probs(params, images):
  x = jnp.asarray(images, jnp.float32)
  feats = digits_judge.MODEL.apply({"params": params}, x, features=True)
  logits = digits_judge.MODEL.apply({"params": params}, x)
  return feats, jax.nn.softmax(logits, -1)


def check_digits(images: Any, name: str = "images") -> np.ndarray:
  """``images`` as float32 [N, 8, 8, 1] in [-1, 1], or a one-line error."""
  x = np.asarray(images, np.float32)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
    raise metrics.MetricsError(f"{name} must be 8x8 grayscale digits "
                               f"[N, 8, 8, 1], got shape {x.shape}")
  metrics.check_sample_range(x, name)
  return x


def features(images: Any, params: Optional[Any] = None
             ) -> Tuple[np.ndarray, np.ndarray]:
  """(judge features [N, 128], class probabilities [N, 10]) of digits in
  [-1, 1], float64."""
  x = check_digits(images)
  params = params if params is not None else digits_judge.load_or_train()
  feats, probs = [], []
  for i in range(0, len(x), 512):
    f, p = _features_and_probs(params, x[i:i + 512])
    feats.append(np.asarray(f, np.float64))
    probs.append(np.asarray(p, np.float64))
  return np.concatenate(feats), np.concatenate(probs)


@functools.lru_cache(maxsize=4)
def reference_statistics(split: str = "test") -> Tuple[np.ndarray,
                                                       np.ndarray]:
  """(mu, sigma) of the judge's features over a digits split."""
  return metrics.feature_statistics(features(data.digits_images(split))[0],
                                    f"the digits {split} split")


def digits_score(images: Any, reference: str = "test") -> Dict[str, float]:
  """``digits_fid`` (against the ``reference`` split), ``confidence`` and
  ``digits_is`` (one split) of samples in [-1, 1], by the cached judge;
  in a multi-host job each process computes the features of its share of
  the samples (:func:`ddpm_jax.evaluators.shares.of_rows`)."""
  # Checked before the judge is loaded (or trained, on a first run).
  x = check_digits(images)
  metrics.check_sample_count(len(x), "the samples")
  feats, probs = shares.of_rows(features, x, "digits-judge features")
  mu, sigma = metrics.feature_statistics(feats, "the samples")
  mu_ref, sigma_ref = reference_statistics(reference)
  return {"digits_fid": metrics.frechet_distance(mu, sigma, mu_ref,
                                                 sigma_ref),
          "confidence": float(np.mean(probs.max(axis=1))),
          "digits_is": metrics.inception_score(probs, splits=1)[0],
          "num_samples": int(len(feats))}
