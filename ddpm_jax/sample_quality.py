"""Sample quality of a model, the one entry that ``evaluate.py`` and the
periodic evaluation during training share: draw samples with the config's
sampler, then score them with the offline digits score
(:mod:`ddpm_jax.digits_score`) or FID / IS (:mod:`ddpm_jax.fid`)."""

from __future__ import annotations

from typing import Any, Dict

import ml_collections

METRICS = ("digits", "fid")


def score(config: ml_collections.ConfigDict, model: Any, params: Any,
          metric: str, num: int, seed: int = 0, batch_size: int = 256,
          inception: str = "", reference_split: str = "train",
          reference_num: int = 0) -> Dict[str, Any]:
  """``metric`` ('digits' or 'fid') of ``num`` samples of ``params`` drawn
  from ``seed``. For FID the Inception weights (``inception``, a path;
  default :func:`ddpm_jax.interop.inception_weights.default_path`) and the
  reference statistics are loaded before any sampling."""
  # pylint: disable=g-import-not-at-top
  from ddpm_jax import digits_score, fid, training
  from ddpm_jax.interop import inception_weights
  if metric not in METRICS:
    raise ValueError(f"the sample-quality metric must be one of {METRICS}, "
                     f"got {metric!r}")
  if metric == "digits" and config.data.name != "digits":
    raise ValueError(f"the digits score needs a digits model; this one was "
                     f"trained on {config.data.name!r}: use the metric 'fid'")
  if metric == "fid":
    weights = inception_weights.load_params(inception)
    reference = fid.dataset_statistics(config, reference_split, weights,
                                       reference_num or None)
  x = training.generate(config, model, params, num, min(num, batch_size),
                        seed)
  if metric == "digits":
    return digits_score.digits_score(x)
  feats, logits = fid.inception_outputs(weights, x)
  is_mean, is_std = fid.inception_score_of_logits(logits)
  return {"fid": fid.fid_of_features(feats, reference),
          "inception_score": is_mean, "inception_score_std": is_std,
          "num_samples": int(num), "reference_split": reference_split}
