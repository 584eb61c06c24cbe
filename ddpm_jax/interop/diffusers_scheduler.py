"""diffusers ``DDPMScheduler`` configs <-> our schedule and sampler settings.

diffusers computes its tables in float32 PyTorch; ours come from float64
NumPy (see :mod:`ddpm_jax.schedules`), so the two agree to float32 rounding,
not bit for bit.
"""

from __future__ import annotations

from typing import Any, Dict

import ml_collections
import numpy as np

from ddpm_jax import schedules
from ddpm_jax.interop import ConversionError

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

# diffusers beta_schedule -> ours (see the table in ddpm_jax.schedules).
_FROM_DIFFUSERS = {"linear": "linear", "scaled_linear": "quad",
                   "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid_geodiff"}
_TO_DIFFUSERS = {v: k for k, v in _FROM_DIFFUSERS.items()}
_VARIANCES = {"fixed_small": "fixedsmall", "fixed_small_log": "fixedsmall",
              "fixed_large": "fixedlarge", "fixed_large_log": "fixedlarge"}
# Our diffusion.prediction <-> DDPMScheduler's prediction_type.
_PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
_FROM_PREDICTION_TYPES = {v: k for k, v in _PREDICTION_TYPES.items()}
# Options that only matter for settings we refuse, or for reduced-step
# sampling (the DDPMScheduler's set_timesteps), which this sampler does not
# do: the full chain ignores them.
_NO_EFFECT = {"timestep_spacing", "steps_offset", "dynamic_thresholding_ratio",
              "sample_max_value", "variance_type", "clip_sample",
              "clip_sample_range", "prediction_type", "thresholding",
              "rescale_betas_zero_snr", "num_train_timesteps", "beta_start",
              "beta_end", "beta_schedule", "trained_betas"}


def _refuse(field: str, value: Any, why: str) -> ConversionError:
  return ConversionError(f"DDPMScheduler option {field}={value!r} is not "
                         f"supported: {why}")


# DDPMScheduler's defaults for the options read here, used where config.json
# omits one (as DDPMScheduler.from_pretrained does).
SCHEDULER_DEFAULTS = {
    "_class_name": "DDPMScheduler",
    "prediction_type": "epsilon",
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "trained_betas": None,
    "beta_schedule": "linear",
}


def settings_from_scheduler_config(cfg: Dict[str, Any]
                                   ) -> ml_collections.ConfigDict:
  """``{'diffusion': ..., 'sampling': ...}`` config fields from a
  ``DDPMScheduler`` config dict; refuses what our sampler cannot honour."""
  # What DDPMScheduler assumes for a key that its config lacks.
  options = {**SCHEDULER_DEFAULTS, **cfg}
  cls = options["_class_name"]
  if cls != "DDPMScheduler":
    raise ConversionError(f"scheduler _class_name is {cls!r}; only "
                          f"DDPMScheduler configs are read")
  for key, value in cfg.items():
    if not key.startswith("_") and key not in _NO_EFFECT and value is not None:
      raise _refuse(key, value, "unknown to this converter")
  prediction_type = options["prediction_type"]
  if prediction_type not in _FROM_PREDICTION_TYPES:
    raise _refuse("prediction_type", prediction_type,
                  f"choose from {sorted(_FROM_PREDICTION_TYPES)}")
  if options["thresholding"]:
    raise _refuse("thresholding", True, "dynamic thresholding is not "
                  "implemented; set it to false")
  if options["rescale_betas_zero_snr"]:
    raise _refuse("rescale_betas_zero_snr", True,
                  "zero-terminal-SNR rescaling is not implemented")
  variance = options["variance_type"]
  if variance not in _VARIANCES and variance != "learned_range":
    raise _refuse("variance_type", variance,
                  f"choose from {sorted(_VARIANCES) + ['learned_range']} "
                  f"(diffusers' 'learned' reads a variance, ours a "
                  f"log-variance)")
  clip = bool(options["clip_sample"])
  clip_range = float(options["clip_sample_range"])
  if clip and clip_range != 1.0:
    raise _refuse("clip_sample_range", clip_range,
                  "predicted x_0 is clipped to [-1, 1]")

  num_t = int(options["num_train_timesteps"])
  d = ml_collections.ConfigDict()
  d.num_timesteps = num_t
  d.prediction = _FROM_PREDICTION_TYPES[prediction_type]
  d.learned_variance = "learned_range" if variance == "learned_range" else ""
  d.beta_start = float(options["beta_start"])
  d.beta_end = float(options["beta_end"])
  betas = options["trained_betas"]
  if betas is not None:
    d.schedule = "custom"
    d.betas = [float(b) for b in betas]
    if len(d.betas) != num_t:
      raise _refuse("trained_betas", f"<{len(d.betas)} values>",
                    f"num_train_timesteps is {num_t}")
  else:
    name = options["beta_schedule"]
    if name not in _FROM_DIFFUSERS:
      raise _refuse("beta_schedule", name,
                    f"choose from {sorted(_FROM_DIFFUSERS)} or trained_betas")
    d.schedule = _FROM_DIFFUSERS[name]

  s = ml_collections.ConfigDict()
  # Used only when the variance is fixed.
  s.variance = _VARIANCES.get(variance, "fixedsmall")
  s.clip_denoised = clip
  s.mean_from = "x0"  # DDPMScheduler.step's route
  return ml_collections.ConfigDict({"diffusion": d, "sampling": s})




def scheduler_config_from_settings(config: ml_collections.ConfigDict
                                   ) -> Dict[str, Any]:
  """A ``DDPMScheduler`` config dict for our ``config.diffusion`` and
  ``config.sampling``. Schedules diffusers has no name for are written as
  ``trained_betas`` (our float64 betas)."""
  d, s = config.diffusion, config.sampling
  prediction = d.prediction
  if prediction not in _PREDICTION_TYPES:
    raise ConversionError(
        f"diffusion.prediction={prediction!r} has no DDPMScheduler "
        f"prediction_type (it has epsilon, sample and v_prediction)")
  learned = d.learned_variance
  if learned and learned != "learned_range":
    raise ConversionError(
        f"diffusion.learned_variance={learned!r} has no DDPMScheduler "
        f"variance_type (diffusers' 'learned' reads a variance, not the "
        f"original's log-variance)")
  out = {
      "_class_name": "DDPMScheduler",
      "num_train_timesteps": int(d.num_timesteps),
      "beta_start": float(d.beta_start),
      "beta_end": float(d.beta_end),
      "beta_schedule": "linear",
      "trained_betas": None,
      "variance_type": learned or {"fixedsmall": "fixed_small",
                                   "fixedlarge": "fixed_large"}[s.variance],
      # diffusers always takes the mean through the (clipped) x_0; our eq. 11
      # route clips nothing, which is clip_sample=False there.
      "clip_sample": bool(s.clip_denoised) and s.mean_from == "x0",
      "clip_sample_range": 1.0,
      "prediction_type": _PREDICTION_TYPES[prediction],
      "thresholding": False,
  }
  name = d.schedule
  if name in _TO_DIFFUSERS and not d.betas:
    out["beta_schedule"] = _TO_DIFFUSERS[name]
  else:
    if d.betas:
      betas = np.asarray(d.betas, np.float64)
    else:
      betas = schedules.get_betas(name, int(d.num_timesteps),
                                  **schedules.schedule_kwargs(
                                      name, beta_start=d.beta_start,
                                      beta_end=d.beta_end))
    out["trained_betas"] = [float(b) for b in betas]
  return out
