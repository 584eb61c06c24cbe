"""FID and IS from features (ddpm_jax.evaluators.metrics): the Fréchet distance
against pytorch-fid's calculate_frechet_distance, IS against a direct
per-sample KL computation, improved precision / recall against a
point-by-point computation, and the bad inputs."""

import numpy as np
import pytest

from ddpm_jax.evaluators import metrics


def gaussian_features(seed, n=400, dim=16, shift=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return rng.normal(size=(n, dim)) @ mix + shift


def test_frechet_distance_matches_pytorch_fid():
  fid_score = pytest.importorskip("pytorch_fid.fid_score")
  for seed, shift in ((0, 0.0), (1, 0.3), (2, 2.0)):
    a = gaussian_features(seed)
    b = gaussian_features(seed + 10, shift=shift)
    mu1, s1 = metrics.feature_statistics(a)
    mu2, s2 = metrics.feature_statistics(b)
    want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # pytorch-fid's statistics are np.mean / np.cov(rowvar=False) too.
    np.testing.assert_allclose(s1, np.cov(a, rowvar=False), rtol=1e-12)


def test_frechet_distance_closed_forms():
  mu, sigma = np.zeros(3), np.diag([1.0, 2.0, 3.0])
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-12
  # Commuting covariances: sum (sqrt(a) - sqrt(b))^2, plus the mean term.
  other = np.diag([4.0, 2.0, 0.5])
  want = 1.0 + sum((np.sqrt(x) - np.sqrt(y)) ** 2 for x, y in
                   zip([1.0, 2.0, 3.0], [4.0, 2.0, 0.5]))
  np.testing.assert_allclose(
      metrics.frechet_distance(mu, sigma, mu + [1.0, 0, 0], other), want,
      rtol=1e-12)
  # Singular covariances (fewer samples than dimensions) are fine.
  a = gaussian_features(3, n=5, dim=16)
  assert np.isfinite(metrics.frechet_distance(
      *metrics.feature_statistics(a), *metrics.feature_statistics(a)))


def test_inception_score_matches_a_direct_computation():
  from scipy.stats import entropy
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1000, 7)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  probs[5] = np.eye(7)[2]  # exact zeros: 0 log 0 = 0
  mean, std = metrics.inception_score(probs, splits=10)
  scores = []
  for part in np.split(probs, 10):
    marginal = part.mean(0)
    scores.append(np.exp(np.mean([entropy(p, marginal) for p in part])))
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)],
                             rtol=1e-10)
  # One-hot, balanced predictions: IS = number of classes.
  one_hot = np.eye(7)[np.arange(700) % 7]
  np.testing.assert_allclose(metrics.inception_score(one_hot, 10)[0], 7.0,
                             rtol=1e-12)


def _manifold_coverage(points, centres, k):
  """Point by point (Kynkäänniemi et al. 2019, eq. 1): the fraction of
  ``points`` within the distance from some centre to its k-th nearest
  other centre."""
  radius = [sorted(np.linalg.norm(c - o) for j, o in enumerate(centres)
                   if j != i)[k - 1] for i, c in enumerate(centres)]
  return np.mean([any(np.linalg.norm(p - c) <= r
                      for c, r in zip(centres, radius)) for p in points])


def test_precision_recall_matches_a_point_by_point_computation():
  real = gaussian_features(5, n=60, dim=8)
  fake = gaussian_features(6, n=50, dim=8, shift=0.7) * 1.3
  precision, recall = metrics.precision_recall(real, fake, k=3, batch=7)
  assert precision == _manifold_coverage(fake, real, 3)
  assert recall == _manifold_coverage(real, fake, 3)
  assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95, (precision,
                                                            recall)
  # The same set covers itself; far-apart sets cover nothing.
  assert metrics.precision_recall(real, real) == (1.0, 1.0)
  assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)
  with pytest.raises(metrics.MetricsError, match="more than k"):
    metrics.precision_recall(real[:3], fake, k=3)
  with pytest.raises(metrics.MetricsError, match="dimension 8"):
    metrics.precision_recall(real, fake[:, :4])


def test_bad_inputs_give_one_line_errors(tmp_path):
  with pytest.raises(metrics.MetricsError, match="at least 2"):
    metrics.feature_statistics(np.zeros((1, 8)))
  with pytest.raises(metrics.MetricsError, match=r"\[num_samples, dim\]"):
    metrics.feature_statistics(np.zeros((8,)))
  with pytest.raises(metrics.MetricsError, match="NaN"):
    metrics.feature_statistics(np.full((4, 2), np.nan))
  with pytest.raises(metrics.MetricsError, match="same feature layer"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(metrics.MetricsError, match="softmax"):
    metrics.inception_score(np.ones((20, 3)), 2)
  with pytest.raises(metrics.MetricsError, match="splits"):
    metrics.inception_score(np.eye(3)[[0, 1, 2]], 10)
  path = str(tmp_path / "stats.npz")
  metrics.save_statistics(path, np.zeros(2), np.eye(2))
  mu, sigma = metrics.load_statistics(path)
  assert mu.shape == (2,) and sigma.shape == (2, 2)
  with pytest.raises(FileExistsError, match="exists"):
    metrics.save_statistics(path, np.ones(2), np.eye(2))
  assert np.array_equal(metrics.load_statistics(path)[0], np.zeros(2))
  np.savez(str(tmp_path / "other.npz"), mean=np.zeros(2))
  with pytest.raises(metrics.MetricsError, match="'mu'"):
    metrics.load_statistics(str(tmp_path / "other.npz"))
  with pytest.raises(FileNotFoundError, match="reference statistics"):
    metrics.load_statistics(str(tmp_path / "missing.npz"))
