"""Sample quality of a model, the one entry that ``evaluate.py`` and the
periodic evaluation during training share: draw samples with the config's
sampler, then score them with the offline digits score
(:mod:`.digits_score`) or FID / IS (:mod:`.fid`)."""

from __future__ import annotations

from typing import Any, Dict

import ml_collections

from ddpm_jax.evaluators import digits_score, fid, metrics, shares
from ddpm_jax.interop import inception_weights
from ddpm_jax.samplers import generate

METRICS = ("digits", "fid")
# Samples drawn when none is given: the digits' held-out split size (the
# score compares like counts) and the paper's FID protocol.
DEFAULT_NUM = {"digits": 297, "fid": 50_000}


def score(config: ml_collections.ConfigDict, model: Any, params: Any,
          metric: str, num: int, seed: int = 0, batch_size: int = 256,
          inception: str = "", reference_split: str = "train",
          reference_num: int = 0, reference_stats: str = "",
          precision_recall: bool = False) -> Dict[str, Any]:
  """``metric`` ('digits' or 'fid') of ``num`` samples of ``params`` drawn
  from ``seed``.

  For FID the Inception weights (``inception``, a path; default
  :func:`ddpm_jax.interop.inception_weights.default_path`) and the
  reference statistics are loaded before any sampling: those of
  ``reference_split`` of ``config.data`` (at most ``reference_num``
  images; cached), or a precomputed ``reference_stats`` ``.npz`` with
  ``mu`` and ``sigma`` (ours, pytorch-fid's or TTUR's). With
  ``precision_recall``, also improved precision and recall (k=3) against
  the features of as many reference images as samples (cached)."""
  if metric not in METRICS:
    raise ValueError(f"the sample-quality metric must be one of {METRICS}, "
                     f"got {metric!r}")
  if metric == "digits" and config.data.name != "digits":
    raise ValueError(f"the digits score needs a digits model; this one was "
                     f"trained on {config.data.name!r}: use the metric 'fid'")
  if metric == "fid":
    weights = inception_weights.load_params(inception)
    if reference_stats:
      reference = metrics.load_statistics(reference_stats)
      fid.check_statistics(reference, weights, reference_stats)
    else:
      reference = fid.dataset_statistics(config, reference_split, weights,
                                         reference_num or None)
    if precision_recall:
      real = fid.dataset_features(config, reference_split, weights, num)
  x = generate.generate(config, model, params, num, min(num, batch_size),
                        seed)
  if metric == "digits":
    return digits_score.digits_score(x)
  # Each process of a multi-host job: the features of its share.
  feats, logits = shares.of_rows(lambda s: fid.inception_outputs(weights, s),
                                 x, "Inception features")
  is_mean, is_std = fid.inception_score_of_logits(logits)
  result = {"fid": fid.fid_of_features(feats, reference),
            "inception_score": is_mean, "inception_score_std": is_std,
            "num_samples": int(num),
            "reference": reference_stats or reference_split}
  if precision_recall:
    result["precision"], result["recall"] = metrics.precision_recall(
        real, feats)
  return result
