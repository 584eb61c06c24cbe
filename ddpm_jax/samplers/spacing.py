"""Which timesteps a reduced-step sampler visits, and the respaced schedule.

A sampler with S < T steps visits S of the T training timesteps, from the
noisiest down. Five rules choose them:

==============  ==========================================================
``leading``     diffusers: 0, r, 2r, ... with r = T // S (+ steps_offset)
``trailing``    diffusers: round(T, T - T/S, ...) - 1, ending near T - 1
``linspace``    diffusers: round(linspace(0, T - 1, S))
``uniform``     original DDIM code: range(0, T, T // S)
``quadratic``   original DDIM code: int(linspace(0, sqrt(0.8 T), S) ** 2)
==============  ==========================================================

Each visited t steps to a previous timestep t_prev, -1 meaning "past the
end" (x_0). For the diffusers rules t_prev = t - T // S (what
``DDIMScheduler.step`` does, whatever the spacing); for the original DDIM
rules t_prev is the next visited timestep. ``uniform`` keeps the original
code's quirk: when S does not divide T it visits more than S timesteps.

:func:`respaced_schedule` is improved DDPM's respacing for ancestral
sampling: the betas of the kept timesteps are recomputed from alpha-bar so
that the shorter chain has the same marginals q(x_t | x_0).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ddpm_jax import schedules
from ddpm_jax.choices import SPACINGS  # pylint: disable=unused-import

DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


def timesteps(spacing: str, num_train_timesteps: int, num_steps: int,
              steps_offset: int = 0) -> np.ndarray:
  """The visited timesteps, noisiest first (int64, strictly decreasing)."""
  big_t, n = int(num_train_timesteps), int(num_steps)
  if spacing not in SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; choose one of "
                     f"{SPACINGS}")
  if not 1 <= n <= big_t:
    raise ValueError(f"steps must be in [1, {big_t}] (the training "
                     f"timesteps), got {n}")
  if steps_offset and spacing != "leading":
    raise ValueError("steps_offset applies to the 'leading' spacing only")
  if spacing == "leading":
    ts = (np.arange(n) * (big_t // n)).round()[::-1] + steps_offset
  elif spacing == "trailing":
    ts = np.round(np.arange(big_t, 0, -big_t / n)) - 1
  elif spacing == "linspace":
    ts = np.linspace(0, big_t - 1, n).round()[::-1]
  elif spacing == "uniform":
    ts = np.arange(0, big_t, big_t // n)[::-1]
  else:  # quadratic
    ts = np.array([int(s) for s in np.linspace(0, np.sqrt(big_t * 0.8), n)
                   ** 2])[::-1]
  ts = ts.astype(np.int64)
  if np.any(np.diff(ts) >= 0):
    raise ValueError(f"{spacing} spacing with {n} of {big_t} steps repeats "
                     f"timesteps: use fewer steps or another spacing")
  if ts[0] >= big_t or ts[-1] < 0:
    raise ValueError(f"steps_offset={steps_offset} puts timestep {ts[0]} "
                     f"outside [0, {big_t})")
  return ts


def timestep_pairs(spacing: str, num_train_timesteps: int, num_steps: int,
                   steps_offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """(t, t_prev) for each step, noisiest first; t_prev = -1 is x_0."""
  ts = timesteps(spacing, num_train_timesteps, num_steps, steps_offset)
  if spacing in DIFFUSERS_SPACINGS:
    prev = ts - num_train_timesteps // int(num_steps)
    prev = np.where(prev >= 0, prev, -1)
  else:
    prev = np.append(ts[1:], -1)
  return ts, prev.astype(np.int64)


def respaced_betas(betas: np.ndarray, kept: np.ndarray) -> np.ndarray:
  """Betas of the chain through ``kept`` timesteps only (improved DDPM):
  beta'_i = 1 - abar[k_i] / abar[k_{i-1}] over the kept k in increasing
  order (abar before the first is 1), in float64."""
  abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
  kept = np.sort(np.asarray(kept, np.int64))
  if kept.size and (kept[0] < 0 or kept[-1] >= abar.size or
                    np.any(np.diff(kept) == 0)):
    raise ValueError("kept timesteps must be distinct and in [0, T)")
  abar_kept = abar[kept]
  prev = np.append(1.0, abar_kept[:-1])
  return 1.0 - abar_kept / prev


def respaced_schedule(betas: np.ndarray, kept: np.ndarray
                      ) -> Tuple[schedules.DiffusionSchedule, np.ndarray]:
  """(the respaced :class:`DiffusionSchedule`, the training timestep of each
  of its indices, increasing). With every timestep kept the recomputed
  betas differ from the original by float64 rounding (~1e-13 relative), so
  the float32 tables, and the chain, are the plain ones."""
  kept = np.sort(np.asarray(kept, np.int64))
  return schedules.make_schedule(respaced_betas(betas, kept)), kept
