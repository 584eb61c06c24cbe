"""What evaluate.py does: bits/dim or sample quality of a workdir's or an
imported model."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ddpm_jax import from_config, paths
from ddpm_jax.evaluators import bpd, sample_quality
from ddpm_jax.interop import sources
from ddpm_jax.run import sampling


def load(workdir: Optional[str], model: Optional[str],
         image_size: Optional[int], use_ema: bool,
         dtype: Optional[str] = None, revision: Optional[str] = None):
  """(config, params, step) of a train.py workdir or of an imported
  ``model`` (a Hub repo id at ``revision``; step None: no training step
  recorded), run in compute ``dtype`` (default: the config's)."""
  if workdir is not None:
    config, params, step = sources.load_workdir(workdir, use_ema)
  else:
    config, params, _ = sources.load_model(model, image_size, use_ema,
                                           revision)
    step = None
  sampling.set_compute_dtype(config, dtype)
  return config, params, step


def set_dataset(config, dataset: Optional[str],
                data_dir: Optional[str]) -> None:
  """``dataset`` ('digits', a tfds name or a directory of images: the
  'folder' dataset) and ``data_dir`` onto ``config.data``."""
  if dataset:
    if paths.isdir(dataset):
      config.data.name, config.data.folder = "folder", dataset
    else:
      config.data.name = dataset
  if data_dir is not None:
    config.data.data_dir = data_dir


def largest_batch(metric: str, num: int, batch_size: int) -> int:
  """The largest batch ``metric`` ('bpd', 'digits' or 'fid') runs the
  model on for ``num`` images (0: the metric's default) in batches of
  ``batch_size``. (Bits/dim of a whole split, whose size is not known
  before its data is read, counts the full ``batch_size``.)"""
  if metric != "bpd":
    num = num or sample_quality.DEFAULT_NUM[metric]
  return min(batch_size, num) if num else batch_size


def bits_per_dim(config, params, step, split: Optional[str], num: int,
                 batch_size: int) -> Dict[str, Any]:
  """Held-out bits/dim (eq. 5) and its parts on ``split`` (default the
  config's eval split), at most ``num`` images (0: all)."""
  if split:
    config.data.eval_split = split
  config.training.eval_examples = num
  config.training.eval_batch_size = batch_size
  result = bpd.evaluate(config, from_config.make_model(config), params,
                        from_config.make_schedule(config))
  result.update(step=step, split=config.data.eval_split)
  return result


def quality(config, params, step, metric: str, num: int, seed: int,
            batch_size: int, sampler: Dict[str, Any],
            variance: Optional[str], **fid_options) -> Dict[str, Any]:
  """``metric`` ('digits' or 'fid') of ``num`` samples (0: the metric's
  default count) drawn with the config's sampler overridden by
  ``sampler`` fields; ``fid_options`` go to
  :func:`ddpm_jax.evaluators.sample_quality.score`."""
  sampling.apply_overrides(config, variance, sampler)
  s = config.sampling
  result = sample_quality.score(
      config, from_config.make_model(config), params, metric,
      num or sample_quality.DEFAULT_NUM[metric], seed, batch_size,
      **fid_options)
  result.update(step=step, sampler=s.sampler,
                steps=int(s.steps) or config.diffusion.num_timesteps,
                seed=seed)
  return result
