"""The evaluations a training run makes every N steps, built from its
config (as big_vision's evaluators are).

Each evaluator has ``run(params, step)``, yielding the (name, value)
scalars it measured (the loop logs them under ``eval/``), and
``summary(results)``, the one line the loop prints. :func:`from_config`
gives the list of (every, evaluator) that the loop walks.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Protocol, Tuple

import ml_collections

from ddpm_jax.evaluators import bpd, sample_quality
from ddpm_jax.models.unet import UNet
from ddpm_jax.schedules import DiffusionSchedule


class Evaluator(Protocol):
  """What the training loop calls every N steps."""

  title: str  # what it is doing, for the log line before it runs

  def run(self, params: Any, step: int) -> Iterator[Tuple[str, Any]]:
    """Evaluates ``params`` (the EMA ones) after ``step`` steps."""

  def summary(self, results: Dict[str, Any]) -> str:
    """One line for the log, from what :meth:`run` yielded."""


class BitsPerDim:
  """Held-out bits/dim, eq. 5 (:func:`ddpm_jax.evaluators.bpd.evaluate`)."""

  def __init__(self, config: ml_collections.ConfigDict, model: UNet,
               schedule: DiffusionSchedule):
    self._config, self._model, self._schedule = config, model, schedule
    self.title = f"bits/dim on {config.data.eval_split}"

  def run(self, params: Any, step: int) -> Iterator[Tuple[str, Any]]:
    del step
    result = bpd.evaluate(self._config, self._model, params, self._schedule)
    for k, v in result.items():
      yield (f"bpd_{k}" if k in bpd.PARTS else k), v

  def summary(self, results: Dict[str, Any]) -> str:
    return (f"eval bits/dim {results['bpd_total']:.4f} on "
            f"{results['num_examples']} images of "
            f"{self._config.data.eval_split}")


class SampleQuality:
  """The digits score or FID / IS of ``training.quality_samples`` samples
  (:func:`ddpm_jax.evaluators.sample_quality.score`)."""

  def __init__(self, config: ml_collections.ConfigDict, model: UNet):
    self._config, self._model = config, model
    self.title = (f"{config.training.quality_metric} of "
                  f"{config.training.quality_samples} samples")

  def run(self, params: Any, step: int) -> Iterator[Tuple[str, Any]]:
    del step
    c = self._config
    result = sample_quality.score(
        c, self._model, params, c.training.quality_metric,
        int(c.training.quality_samples), seed=c.seed,
        batch_size=c.sampling.batch_size)
    for k, v in result.items():
      if isinstance(v, float):
        yield k, v

  def summary(self, results: Dict[str, Any]) -> str:
    return "sample quality " + " ".join(f"{k} {v:.4g}"
                                        for k, v in results.items())


def from_config(config: ml_collections.ConfigDict, model: UNet,
                schedule: DiffusionSchedule) -> List[Tuple[int, Evaluator]]:
  """(every, evaluator) for each evaluation ``config.training`` asks for
  (every 0: never)."""
  tr = config.training
  return [(int(tr.eval_every), BitsPerDim(config, model, schedule)),
          (int(tr.quality_every), SampleQuality(config, model))]


def due(every: int, done: int, total: int) -> bool:
  """Whether an evaluation run every ``every`` steps (0: never) is due
  after step ``done`` of ``total``: at each multiple and at the end."""
  return bool(every) and (done % every == 0 or done == total)
