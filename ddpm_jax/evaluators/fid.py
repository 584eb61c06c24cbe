"""FID and Inception Score of images with the FID Inception
(:mod:`ddpm_jax.models.inception`), batched and split over devices.

Images come as ddpm-jax samples are: [N, H, W, C] in [-1, 1], C = 3 or 1
(grayscale is repeated to RGB). Following the released evaluations, the
pool3 features feed FID (:func:`.metrics.frechet_distance`) and
the 1008 logits *without* the fc bias feed IS (the OpenAI / TTUR code
multiplies pool3 by the fc weights only; torch-fidelity calls these
``logits_unbiased``).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import numpy as np

from ddpm_jax import data, parallel, paths, progress
from ddpm_jax.evaluators import metrics, shares
from ddpm_jax.models.inception import FIDInception

_MODEL = FIDInception()


def check_images(images: Any, name: str = "images",
                 quantize: bool = True) -> np.ndarray:
  """``images`` [N, H, W, 1 or 3] in [-1, 1] as float32 RGB in [0, 1], or
  a one-line error. ``quantize`` rounds to the 256 levels of an 8-bit PNG
  (as the released evaluations read samples; data is already on them)."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise metrics.MetricsError(f"{name} must be [N, H, W, 3] (or 1 channel)"
                               f", got shape {x.shape}")
  if x.dtype == np.uint8:
    raise metrics.MetricsError(f"{name} are uint8: pass x / 127.5 - 1 "
                               f"(samples in [-1, 1])")
  x = x.astype(np.float32)
  metrics.check_sample_range(x, name)
  x = (np.clip(x, -1.0, 1.0) + 1.0) / 2.0
  if quantize:
    x = np.round(x * 255.0) / 255.0
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
  for i in progress.bar(range(0, len(x), batch), desc="Inception features",
                        unit="batch"):
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


def check_statistics(reference: Tuple[np.ndarray, np.ndarray], params: Any,
                     name: str) -> None:
  """A one-line error unless ``reference`` (mu, sigma) are statistics of
  as many features as the Inception ``params`` give (pool3: 2048): checked
  before any sampling, which a mismatch would waste."""
  dim = int(np.shape(params["fc"]["kernel"])[0])
  if np.shape(reference[0]) != (dim,):
    raise metrics.MetricsError(
        f"{name}: statistics of {np.shape(reference[0])[0]} features, not "
        f"the FID Inception's {dim} (pool3): compare statistics of the "
        f"same feature layer")


def _cache_dir(cache_dir: str) -> str:
  return cache_dir or os.environ.get("DDPM_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "ddpm_jax")


def _cache_path(config: Any, kind: str, split: str, limit: Optional[int],
                cache_dir: str) -> str:
  d = config.data
  where = d.name if d.name != "folder" else "folder_" + "_".join(
      p for p in paths.absolute(d.folder).replace("://", "/").split("/")
      if p)
  name = f"fid_{kind}_{where}_{split}_{d.image_size}px_{limit or 'all'}.npz"
  return paths.join(_cache_dir(cache_dir), name)


def _split_features(config: Any, split: str, params: Any,
                    limit: Optional[int], batch_size: int) -> np.ndarray:
  """The pool3 features of ``split``; in a multi-host job each process
  computes those of its block of each batch (:mod:`.shares`)."""
  feats, count, mine = [], 0, 0

  def features(images):
    nonlocal mine
    mine += len(images)
    return inception_outputs(params, images, batch_size)[:1]

  for batch in data.eval_batches(config, split, batch_size, limit):
    feats.append(shares.of_rows(features, batch, None)[0])
    count += len(batch)
  shares.say(f"Inception features of {mine} of {count} images of {split}")
  return np.concatenate(feats)


def dataset_statistics(config: Any, split: str, params: Any,
                       limit: Optional[int] = None, batch_size: int = 200,
                       cache_dir: str = "") -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the pool3 features of ``split`` of ``config.data`` (at
  its image size; at most ``limit`` images), computed once and cached as
  ``fid_stats_<dataset>_<split>_<size>px_<limit or all>.npz`` in
  ``cache_dir`` (default ``$DDPM_JAX_CACHE`` or ``~/.cache/ddpm_jax``).
  In a multi-host job the processes share the feature work unless every
  one of them finds the cache."""
  path = _cache_path(config, "stats", split, limit, cache_dir)
  if shares.everywhere(paths.exists(path)):  # else all share the work
    return metrics.load_statistics(path)
  feats = _split_features(config, split, params, limit, batch_size)
  mu, sigma = metrics.feature_statistics(feats, f"the {split} split")
  if not paths.exists(path):  # (another process may have written them)
    paths.save_cache_npz(path, f"the Inception statistics of {split}",
                         mu=np.asarray(mu, np.float64),
                         sigma=np.asarray(sigma, np.float64))
  return mu, sigma


def dataset_features(config: Any, split: str, params: Any,
                     limit: Optional[int] = None, batch_size: int = 200,
                     cache_dir: str = "") -> np.ndarray:
  """The pool3 features [N, 2048] of (at most ``limit`` images of)
  ``split`` of ``config.data``, for precision and recall; computed once
  and cached as float32 ``fid_feats_<...>.npz`` beside the statistics."""
  path = _cache_path(config, "feats", split, limit, cache_dir)
  if shares.everywhere(paths.exists(path)):  # else all share the work
    try:
      return np.asarray(paths.load_npz(path)["features"], np.float64)
    except (KeyError, ValueError, OSError) as e:
      raise metrics.MetricsError(
          f"{path} is not a features file with an array 'features' ({e}): "
          f"remove it to recompute") from None
  feats = _split_features(config, split, params, limit, batch_size)
  if not paths.exists(path):
    paths.save_cache_npz(path, f"the Inception features of {split}",
                         features=feats.astype(np.float32))
  return feats.astype(np.float32).astype(np.float64)

