"""Samplers registered by name; each runs its whole chain in one
``lax.scan`` under ``jax.jit``.

=========  ==================================================================
``ddpm``   ancestral sampling (Algorithm 2); with ``steps`` < T, improved
           DDPM's respacing (:func:`.spacing.respaced_schedule`)
``ddim``   DDIM (:mod:`.ddim`), any ``eta`` >= 0
=========  ==================================================================

Every sampler is ``fn(params, apply_fn, betas, key, shape, **options)`` with
float64 ``betas`` (the training schedule; tables are built from them on the
host) and returns (x_0, trajectory dict), the trajectory holding x_t, the
predicted x_0 and the training t every ``return_every`` steps. Row b draws
its randomness from ``fold_in(key, offset + b)``; with ``mesh`` the batch
is split over the mesh's devices (the result is a global array). Each
sampler takes only its own options: ``mean_from`` is the ancestral
sampler's, ``eta``, ``set_alpha_to_one`` and ``rederive_eps`` DDIM's.
``progress_every=K`` reports every K-th step done to the host from inside
the scan (:mod:`.scan_progress`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from ddpm_jax import parallel, schedules
from ddpm_jax.samplers import ancestral, ddim, spacing
from ddpm_jax.diffusion import ApplyFn
from ddpm_jax.registry import Registry

SamplerFn = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]
_SAMPLERS: Registry[SamplerFn] = Registry("sampler")


def register_sampler(name: str) -> Callable[[SamplerFn], SamplerFn]:
  """Decorator: registers a sampler under ``name``."""
  return _SAMPLERS.register(name)


def sampler_names() -> list[str]:
  """Names accepted by :func:`get_sampler`."""
  return _SAMPLERS.names()


def get_sampler(name: str) -> SamplerFn:
  """The sampler registered as ``name``."""
  return _SAMPLERS.get(name)


def _placement(params: Any, shape: Tuple[int, ...], mesh):
  """(params on the mesh, the batch sharding), or as they are without one."""
  if mesh is None:
    return params, None
  if shape[0] % mesh.size:
    raise ValueError(f"a batch of {shape[0]} does not split over "
                     f"{mesh.size} devices: use a multiple of {mesh.size}")
  return parallel.on_mesh(params, mesh), parallel.batch_sharding(mesh)


def _steps(steps: Optional[int], num_timesteps: int) -> int:
  """The step count: ``steps``, or all T for None or 0 (the range is
  checked where the timesteps are chosen, :func:`spacing.timesteps`)."""
  return num_timesteps if steps in (None, 0) else int(steps)


@register_sampler("ddpm")
def ddpm(params: Any, apply_fn: ApplyFn, betas: np.ndarray, key: jax.Array,
         shape: Tuple[int, ...], *, steps: Optional[int] = None,
         spacing_name: str = "uniform", steps_offset: int = 0,
         variance: str = "fixedlarge", prediction: str = "eps",
         clip_denoised: bool = True, mean_from: str = "x0",
         return_every: int = 0, self_condition: bool = False,
         offset: int = 0, mesh=None, progress_every: int = 0):
  """Ancestral sampling over all T steps, or over ``steps`` of them chosen
  by ``spacing_name`` with the betas respaced (improved DDPM)."""
  num_t = len(betas)
  n = _steps(steps, num_t)
  if n == num_t:
    schedule, kept = schedules.make_schedule(betas), None
  else:
    if prediction == "xprev":
      raise ValueError("prediction 'xprev' predicts the mean of the full "
                       "chain's step: sample it with all T steps")
    schedule, kept = spacing.respaced_schedule(
        betas, spacing.timesteps(spacing_name, num_t, n, steps_offset))
  params, sharding = _placement(params, shape, mesh)
  return ancestral.sample(params, apply_fn, schedule, key, tuple(shape),
                          clip_denoised=clip_denoised, variance=variance,
                          mean_from=mean_from, return_every=return_every,
                          prediction=prediction,
                          self_condition=self_condition,
                          timestep_map=None if kept is None else
                          jax.numpy.asarray(kept, jax.numpy.int32),
                          offset=offset, sharding=sharding,
                          progress_every=progress_every)


@register_sampler("ddim")
def ddim_sampler(params: Any, apply_fn: ApplyFn, betas: np.ndarray,
                 key: jax.Array, shape: Tuple[int, ...], *,
                 steps: Optional[int] = None, spacing_name: str = "uniform",
                 steps_offset: int = 0, eta: float = 0.0,
                 set_alpha_to_one: bool = True, rederive_eps: bool = False,
                 variance: str = "fixedlarge", prediction: str = "eps",
                 clip_denoised: bool = True, return_every: int = 0,
                 self_condition: bool = False, offset: int = 0, mesh=None,
                 progress_every: int = 0):
  """DDIM over ``steps`` timesteps (default all T) chosen by
  ``spacing_name``. ``variance`` only says whether the network has
  variance channels to drop."""
  n = _steps(steps, len(betas))
  plan = ddim.make_plan(betas, n, eta=float(eta), spacing_name=spacing_name,
                        set_alpha_to_one=set_alpha_to_one,
                        steps_offset=steps_offset)
  params, sharding = _placement(params, shape, mesh)
  return ddim.sample(params, apply_fn, schedules.make_schedule(betas), plan,
                     key, tuple(shape), prediction=prediction,
                     variance=variance, clip_denoised=clip_denoised,
                     rederive_eps=rederive_eps, return_every=return_every,
                     self_condition=self_condition, offset=offset,
                     sharding=sharding, progress_every=progress_every)
