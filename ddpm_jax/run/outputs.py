"""Where sample.py writes: a name made from every setting that changes the
samples, a JSON sidecar holding all of them, and never over an existing
output (a default name takes the next free ``_2``, ``_3`` ...; an explicit
``--out`` that exists is an error)."""

from __future__ import annotations

import itertools
import json
from typing import Any, Dict, Optional, Sequence

from configs import default as default_config
from ddpm_jax import paths

# The files each kind of output writes after its prefix.
SAMPLES = (".png", ".npz", ".json")
PROGRESSION = ("_x0.png", "_xt.png", ".gif", "_trajectory.npz", ".json")
STRIP = (".png", ".npz", ".json")


def sampling_tag(config, use_ema: bool = True) -> str:
  """A name suffix for every sampling setting that differs from the
  project defaults (configs/default.py), e.g. '_ddim50_trailing_eta0.5';
  '' for the full ancestral chain of the EMA parameters in float32
  (:func:`model_tag`)."""
  s, d = config.sampling, default_config.get_default_config().sampling
  big_t = config.diffusion.num_timesteps
  parts = []
  if s.sampler != "ddpm" or s.steps not in (0, big_t):
    parts.append(f"{s.sampler}{s.steps or big_t}")
    if s.spacing != d.spacing:
      parts.append(s.spacing)
  if s.sampler == "ddim":
    if s.eta:
      parts.append(f"eta{s.eta:g}")
    if not s.set_alpha_to_one:
      parts.append("lastabar")
    if s.rederive_eps:
      parts.append("rederive")
  elif s.variance != d.variance and not config.diffusion.learned_variance:
    parts.append(s.variance)
  if s.mean_from != d.mean_from:
    parts.append(f"mean{s.mean_from}")
  if not s.clip_denoised:
    parts.append("noclip")
  if s.label >= 0:
    parts.append(f"class{s.label}")
  if s.guidance:
    parts.append(f"{'clf' if s.classifier else 'w'}{s.guidance:g}")
  return "".join(f"_{p}" for p in parts) + model_tag(config, use_ema)


def model_tag(config, use_ema: bool = True) -> str:
  """The name suffix of how the network runs: '_bf16' for a bfloat16
  compute dtype, '_raw' for the raw (not EMA) parameters."""
  parts = []
  if config.model.dtype != "float32":
    parts.append({"bfloat16": "bf16"}.get(config.model.dtype,
                                         config.model.dtype))
  if not use_ema:
    parts.append("raw")
  return "".join(f"_{p}" for p in parts)


def check_writable(out: Optional[str], default_folder: str) -> None:
  """Before any work: the folder of ``--out`` (a prefix), or
  ``default_folder`` without one, must be a folder this process can write
  (:func:`ddpm_jax.paths.check_writable_folder`)."""
  folder = paths.dirname(out) if out else default_folder
  paths.check_writable_folder(folder or ".", "--out")


def claim(prefix: str, suffixes: Sequence[str], explicit: bool) -> str:
  """``prefix`` if none of ``prefix + suffix`` exists. Otherwise, for an
  explicit ``--out``, a FileExistsError naming the file; for a default
  name, the first free ``prefix_2``, ``prefix_3`` ..."""
  def taken(p):
    return next((p + s for s in suffixes if paths.exists(p + s)), None)

  clash = taken(prefix)
  if clash is None:
    return prefix
  if explicit:
    raise FileExistsError(f"{clash} exists: choose another --out (outputs "
                          f"are never overwritten)")
  for k in itertools.count(2):
    if taken(f"{prefix}_{k}") is None:
      return f"{prefix}_{k}"


def write_settings(prefix: str, config, *, source: str, seed: int,
                   use_ema: bool, step: Optional[int] = None,
                   **extra: Any) -> None:
  """``prefix.json``: what drew these outputs (the source and its step,
  the seed, EMA or raw, the compute dtype, every ``config.sampling``
  field, and ``extra``)."""
  settings: Dict[str, Any] = {"source": source, "step": step, "seed": seed,
                              "ema": use_ema, "dtype": config.model.dtype,
                              "num_timesteps": config.diffusion.num_timesteps,
                              "sampling": config.sampling.to_dict(), **extra}
  paths.write_text(prefix + ".json", json.dumps(settings, indent=2) + "\n")
