"""FID and Inception Score of images with the FID Inception
(:mod:`ddpm_jax.models.inception`), batched and split over devices.

Images come as ddpm-jax samples are: [N, H, W, C] in [-1, 1], C = 3 or 1
(grayscale is repeated to RGB). Following the released evaluations, the
pool3 features feed FID (:func:`ddpm_jax.metrics.frechet_distance`) and
the 1008 logits *without* the fc bias feed IS (the OpenAI / TTUR code
multiplies pool3 by the fc weights only; torch-fidelity calls these
``logits_unbiased``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import numpy as np

from ddpm_jax import metrics, parallel
from ddpm_jax.models.inception import FIDInception

_MODEL = FIDInception()


def check_images(images: Any, name: str = "images") -> np.ndarray:
  """``images`` [N, H, W, 1 or 3] in [-1, 1] as float32 RGB in [0, 1], or
  a one-line error."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise metrics.MetricsError(f"{name} must be [N, H, W, 3] (or 1 channel)"
                               f", got shape {x.shape}")
  if x.dtype == np.uint8:
    raise metrics.MetricsError(f"{name} are uint8: pass x / 127.5 - 1 "
                               f"(samples in [-1, 1])")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise metrics.MetricsError(f"{name} hold NaN or inf values")
  lo, hi = float(x.min()), float(x.max())
  if lo < -1.001 or hi > 1.001:
    raise metrics.MetricsError(
        f"{name} range over [{lo:.3g}, {hi:.3g}]; expected [-1, 1] (a "
        f"sampler's output): map [0, 255] images with x / 127.5 - 1")
  x = (np.clip(x, -1.0, 1.0) + 1.0) / 2.0
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


@jax.jit
def _forward(params, x):
  feats, _ = _MODEL.apply({"params": params}, x)
  return feats, feats @ params["fc"]["kernel"]


def inception_outputs(params: Any, images: Any, batch_size: int = 200,
                      mesh: Optional[jax.sharding.Mesh] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """(pool3 features [N, 2048], unbiased logits [N, 1008]) in float64.
  Each batch is split over ``mesh`` (default: this process's devices) and
  padded to a multiple of its size; padding rows are dropped."""
  x = check_images(images)
  mesh = mesh or parallel.make_mesh(jax.local_devices())
  sharding = parallel.batch_sharding(mesh)
  params = parallel.on_mesh(params, mesh)
  batch = -(-int(batch_size) // mesh.size) * mesh.size
  feats, logits = [], []
  for i in range(0, len(x), batch):
    chunk = x[i:i + batch]
    pad = -len(chunk) % mesh.size
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                              chunk.dtype)])
    f, l = _forward(params, jax.device_put(chunk, sharding))
    feats.append(np.asarray(f, np.float64)[:len(chunk) - pad])
    logits.append(np.asarray(l, np.float64)[:len(chunk) - pad])
  return np.concatenate(feats), np.concatenate(logits)


def inception_score_of_logits(logits: np.ndarray, splits: int = 10
                              ) -> Tuple[float, float]:
  """(mean, std) IS from unbiased logits (softmax over the 1008 classes)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  return metrics.inception_score(probs, splits)


def fid_of_features(features: np.ndarray, reference: Tuple[np.ndarray,
                                                           np.ndarray]
                    ) -> float:
  """FID of pool3 ``features`` against reference (mu, sigma)."""
  mu, sigma = metrics.feature_statistics(features, "the sample features")
  return metrics.frechet_distance(mu, sigma, *reference)
