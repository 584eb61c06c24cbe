"""Sample-quality metrics computed from network features, in float64 NumPy:
the Fréchet distance between Gaussian fits of two feature sets (FID when
the features are Inception-v3 pool3 activations; Heusel et al. 2017,
arXiv 1706.08500, eq. 6), the Inception Score (Salimans et al. 2016,
arXiv 1606.03498, section 4) from class probabilities, and improved
precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991).

Statistics (mu, sigma) are cached as plain ``.npz`` files (read with
``allow_pickle=False``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ddpm_jax import paths


class MetricsError(ValueError):
  """Inputs that no metric can be computed from (one-line message)."""


def check_sample_range(x: np.ndarray, name: str = "images") -> None:
  """A one-line error unless ``x`` is finite and in [-1, 1] (to 1e-3), the
  range of a sampler's output."""
  if not np.all(np.isfinite(x)):
    raise MetricsError(f"{name} hold NaN or inf values")
  lo, hi = float(np.min(x)), float(np.max(x))
  if lo < -1.001 or hi > 1.001:
    raise MetricsError(
        f"{name} range over [{lo:.3g}, {hi:.3g}]; expected [-1, 1] (a "
        f"sampler's output): map [0, 255] images with x / 127.5 - 1")


def check_sample_count(n: int, name: str) -> None:
  """A one-line error if ``n`` samples are too few for a covariance."""
  if n < 2:
    raise MetricsError(f"{name} has {n} sample(s): a covariance "
                       f"needs at least 2 (FID protocols use 10k-50k)")


def _features(features: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise MetricsError(f"{name} must be [num_samples, dim], got shape "
                       f"{x.shape}")
  check_sample_count(x.shape[0], name)
  if not np.all(np.isfinite(x)):
    raise MetricsError(f"{name} holds NaN or inf values")
  return x


def feature_statistics(features: np.ndarray, name: str = "features"
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma): the mean and unbiased covariance (ddof 1, as pytorch-fid
  and TTUR) of ``features`` [N, D], in float64."""
  x = _features(features, name)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))
  (Heusel et al. 2017, eq. 6), in float64.

  Tr((sigma1 sigma2)^(1/2)) is the sum of the square roots of the
  eigenvalues of sigma1 sigma2, which equal those of the symmetric PSD
  matrix s sigma2 s with s = sigma1^(1/2); both roots come from ``eigh``,
  so no complex parts arise and singular covariances (fewer samples than
  dimensions) need no diagonal offset. Rounding-level negative
  eigenvalues are clipped to 0."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(
      np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  dim = mu1.shape[0]
  for name, arr, shape in (("mu2", mu2, (dim,)), ("sigma1", sigma1,
                                                  (dim, dim)),
                           ("sigma2", sigma2, (dim, dim))):
    if arr.shape != shape:
      raise MetricsError(f"{name} has shape {arr.shape}, expected {shape} "
                         f"(mu1 has {dim} dimensions): compare statistics "
                         f"of the same feature layer")
  w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
  inner = root1 @ sigma2 @ root1
  w = np.linalg.eigvalsh((inner + inner.T) / 2)
  tr_covmean = float(np.sum(np.sqrt(np.clip(w, 0, None))))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2.0 * tr_covmean)


def inception_score(probs: np.ndarray, splits: int = 10
                    ) -> Tuple[float, float]:
  """(mean, std) over ``splits`` equal parts of exp(E_x KL(p(y|x) || p(y)))
  (Salimans et al. 2016), p(y) being each part's mean of ``probs``
  [N, classes]; float64. Samples beyond a multiple of ``splits`` are
  dropped, as in the original code."""
  p = np.asarray(probs, np.float64)
  if p.ndim != 2:
    raise MetricsError(f"probs must be [num_samples, classes], got shape "
                       f"{p.shape}")
  if splits < 1 or p.shape[0] < splits:
    raise MetricsError(f"{p.shape[0]} samples do not fill {splits} splits: "
                       f"pass more samples or fewer splits")
  if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.allclose(
      p.sum(axis=1), 1.0, atol=1e-3):
    raise MetricsError("probs must be class probabilities (non-negative "
                       "rows summing to 1): apply a softmax to the logits")
  n = p.shape[0] // splits
  scores = []
  for k in range(splits):
    part = p[k * n:(k + 1) * n]
    marginal = part.mean(axis=0, keepdims=True)
    terms = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) -
                                       np.log(np.where(part > 0, marginal,
                                                       1))), 0.0)
    scores.append(np.exp(np.mean(np.sum(terms, axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances [len(a), len(b)], in float64, clamped at 0
  (the expansion |a|^2 + |b|^2 - 2 a.b can round below it)."""
  d = (np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :]
       - 2.0 * a @ b.T)
  return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int = 3, batch: int = 1000
              ) -> np.ndarray:
  """Each point's squared distance to its k-th nearest *other* point of
  ``features`` [N, D]: the radius of its ball in the k-NN manifold
  estimate (Kynkäänniemi et al. 2019, section 2)."""
  x = _features(features, "features")
  if not 1 <= k < x.shape[0]:
    raise MetricsError(f"k={k} nearest neighbours need more than k points "
                       f"(got {x.shape[0]}): pass more samples or a smaller k")
  radii = np.empty(x.shape[0])
  for i in range(0, x.shape[0], batch):
    d = _sq_distances(x[i:i + batch], x)
    # The k+1-th smallest: the point itself (distance 0) comes first.
    radii[i:i + batch] = np.partition(d, k, axis=1)[:, k]
  return radii


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
              batch: int) -> float:
  """The fraction of ``points`` inside at least one ball (centre, radius)."""
  inside = np.zeros(points.shape[0], bool)
  for i in range(0, points.shape[0], batch):
    d = _sq_distances(points[i:i + batch], centres)
    inside[i:i + batch] = np.any(d <= radii[None, :], axis=1)
  return float(np.mean(inside))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     batch: int = 1000) -> Tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-2):
  precision is the fraction of ``fake`` features inside the k-NN manifold
  of ``real`` (the union of balls reaching each real point's k-th nearest
  real neighbour), recall the fraction of ``real`` features inside that of
  ``fake``. k=3, as the paper and the ADM evaluator use."""
  real = _features(real, "the real features")
  fake = _features(fake, "the sample features")
  if real.shape[1] != fake.shape[1]:
    raise MetricsError(f"real features have dimension {real.shape[1]} but "
                       f"sample features {fake.shape[1]}")
  precision = _coverage(fake, real, knn_radii(real, k, batch), batch)
  recall = _coverage(real, fake, knn_radii(fake, k, batch), batch)
  return precision, recall


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes (mu, sigma) to ``path`` (``.npz``), atomically, never over an
  existing file."""
  if paths.exists(path):
    raise FileExistsError(f"{path} exists: remove it or choose another path")
  paths.save_npz(path, compress=False, mu=np.asarray(mu, np.float64),
                 sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a ``.npz`` with arrays ``mu`` [D] and ``sigma``
  [D, D] (ours, or pytorch-fid's / TTUR's precomputed statistics)."""
  if not paths.exists(path):
    raise FileNotFoundError(f"{path} does not exist: compute the reference "
                            f"statistics first")
  try:
    f = paths.load_npz(path)
    mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(
        f["sigma"], np.float64)
  except (KeyError, ValueError, OSError) as e:
    raise MetricsError(f"{path} is not a statistics file with arrays 'mu' "
                       f"and 'sigma' ({e})") from None
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise MetricsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do "
                       f"not match (expected [D] and [D, D])")
  return mu, sigma
