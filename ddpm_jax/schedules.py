"""Beta schedules and the diffusion tables derived from them.

Every beta schedule is a float64 NumPy function registered by name. The
derived tables (alpha-bar, posterior coefficients, ...) are computed once in
float64 and stored as float32 arrays in :class:`DiffusionSchedule`, an
immutable pytree that jitted functions take as an ordinary argument.

Name map to the references:

=====================  =====================================  ==========================
ddpm-jax               diffusers ``beta_schedule``            lucidrains ``beta_schedule``
=====================  =====================================  ==========================
``linear``             ``linear``                             ``linear`` (T=1000)
``quad``               ``scaled_linear``                      --
``cosine``             ``squaredcos_cap_v2``                  ``cosine``
``sigmoid_geodiff``    ``sigmoid`` (sigmoid of the betas)     --
``sigmoid_alphabar``   --                                     ``sigmoid`` (of alpha-bar)
``const``, ``jsd``,    --                                     --
``warmup10/50``        (original TF code only)
=====================  =====================================  ==========================
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from ddpm_jax.registry import Registry

BetaFn = Callable[..., np.ndarray]
_BETA_SCHEDULES: Registry[BetaFn] = Registry("beta schedule",
                                             " or pass betas directly")


def register_beta_schedule(name: str) -> Callable[[BetaFn], BetaFn]:
  """Decorator: registers ``fn(num_timesteps, **kwargs) -> float64 betas``."""
  return _BETA_SCHEDULES.register(name)


def beta_schedule_names() -> list[str]:
  """Names accepted by :func:`get_betas`."""
  return _BETA_SCHEDULES.names()


@register_beta_schedule("linear")
def linear_betas(num_timesteps: int, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """Linear betas from ``beta_start`` to ``beta_end`` (the paper, Sec. 4)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


@register_beta_schedule("quad")
def quad_betas(num_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> np.ndarray:
  """Linear in sqrt(beta), squared (diffusers ``scaled_linear``)."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps,
                     dtype=np.float64)**2


@register_beta_schedule("const")
def const_betas(num_timesteps: int, beta_end: float = 0.02) -> np.ndarray:
  """Every beta equals ``beta_end`` (original code)."""
  return np.full(num_timesteps, beta_end, dtype=np.float64)


@register_beta_schedule("jsd")
def jsd_betas(num_timesteps: int) -> np.ndarray:
  """1/T, 1/(T-1), ..., 1 (original code, after Sohl-Dickstein et al.)."""
  return 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)


def _warmup_betas(num_timesteps: int, beta_start: float, beta_end: float,
                  warmup_frac: float) -> np.ndarray:
  betas = np.full(num_timesteps, beta_end, dtype=np.float64)
  warmup = int(num_timesteps * warmup_frac)
  betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
  return betas


@register_beta_schedule("warmup10")
def warmup10_betas(num_timesteps: int, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> np.ndarray:
  """Linear over the first 10% of steps, then constant (original code)."""
  return _warmup_betas(num_timesteps, beta_start, beta_end, 0.1)


@register_beta_schedule("warmup50")
def warmup50_betas(num_timesteps: int, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> np.ndarray:
  """Linear over the first 50% of steps, then constant (original code)."""
  return _warmup_betas(num_timesteps, beta_start, beta_end, 0.5)


def betas_from_alphas_cumprod(alphas_cumprod: np.ndarray,
                              max_beta: float = 0.999) -> np.ndarray:
  """beta_t = 1 - abar_t / abar_{t-1}, clipped to ``max_beta``.

  ``alphas_cumprod`` has T + 1 entries, abar at t = 0 .. T (continuous time).
  """
  abar = np.asarray(alphas_cumprod, dtype=np.float64)
  return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)


@register_beta_schedule("cosine")
def cosine_betas(num_timesteps: int, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """Cosine alpha-bar of improved DDPM (Nichol & Dhariwal 2021, eq. 17)."""
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  abar = np.cos((u + s) / (1 + s) * math.pi / 2)**2
  return betas_from_alphas_cumprod(abar, max_beta)


@register_beta_schedule("sigmoid_geodiff")
def sigmoid_geodiff_betas(num_timesteps: int, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> np.ndarray:
  """Sigmoid of linspace(-6, 6) scaled into [beta_start, beta_end] (GeoDiff;
  diffusers ``sigmoid``)."""
  z = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
  return 1.0 / (1.0 + np.exp(-z)) * (beta_end - beta_start) + beta_start


@register_beta_schedule("sigmoid_alphabar")
def sigmoid_alphabar_betas(num_timesteps: int, start: float = -3.0,
                           end: float = 3.0, tau: float = 1.0,
                           max_beta: float = 0.999) -> np.ndarray:
  """Alpha-bar shaped as a falling sigmoid (Jabri et al. 2022; lucidrains
  ``sigmoid``)."""
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  v_start, v_end = sig(start / tau), sig(end / tau)
  abar = (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)
  return betas_from_alphas_cumprod(abar, max_beta)


def get_betas(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """The float64 betas of the registered schedule ``name``."""
  fn = _BETA_SCHEDULES.get(name)
  if int(num_timesteps) < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  accepted = [k for k in inspect.signature(fn).parameters
              if k != "num_timesteps"]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(f"beta schedule {name!r} takes no {unknown}; its "
                     f"options are {accepted}")
  return fn(int(num_timesteps), **kwargs)


@flax.struct.dataclass
class DiffusionSchedule:
  """Per-timestep float32 tables, indexed by t in [0, T). A pytree.

  Index t here is the paper's t + 1 (the code's convention): ``betas[0]`` is
  the paper's beta_1 and ``alphas_cumprod_prev[0]`` is 1.
  """
  betas: jnp.ndarray
  alphas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  log_one_minus_alphas_cumprod: jnp.ndarray
  # x0 from eps (eq. 4 solved for x0): x0 = a * x_t - b * eps.
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  # q(x_{t-1} | x_t, x0) (eqs. 6-7).
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  # eq. 11: mu = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t).
  sqrt_recip_alphas: jnp.ndarray
  eps_coef: jnp.ndarray
  # sigma_t^2 = beta_t ('fixedlarge'), with the original's t = 0 entry.
  fixedlarge_log_variance: jnp.ndarray
  # log beta_t: the upper end of improved DDPM's learned_range variance.
  log_betas: jnp.ndarray
  # SNR_t = abar_t / (1 - abar_t), for loss weightings (min-SNR, P2).
  snr: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    """T, the length of the chain (static under jit)."""
    return self.betas.shape[0]


def schedule_tables(betas: np.ndarray) -> Dict[str, np.ndarray]:
  """All derived tables in float64, from float64 ``betas``."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError("betas must be a non-empty 1-D array")
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError("every beta must lie in (0, 1]")
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # posterior_variance[0] is 0; the original clips its log to entry 1.
  first = post_var[1] if post_var.size > 1 else betas[0]
  with np.errstate(divide="ignore"):
    log_post_var = np.log(np.append(first, post_var[1:]))
    large_log_var = np.log(np.append(first, betas[1:]))
  return dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      sqrt_alphas_cumprod=np.sqrt(abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
      log_one_minus_alphas_cumprod=np.log(1.0 - abar),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
      posterior_variance=post_var,
      posterior_log_variance_clipped=log_post_var,
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      sqrt_recip_alphas=1.0 / np.sqrt(alphas),
      eps_coef=betas / np.sqrt(1.0 - abar),
      fixedlarge_log_variance=large_log_var,
      log_betas=np.log(betas),
      snr=abar / (1.0 - abar),
  )


def make_schedule(betas: np.ndarray) -> DiffusionSchedule:
  """A :class:`DiffusionSchedule` from betas (computed in float64, kept f32)."""
  tables = schedule_tables(betas)
  return DiffusionSchedule(
      **{k: jnp.asarray(v.astype(np.float32)) for k, v in tables.items()})


def schedule_kwargs(name: str, **options) -> Dict[str, float]:
  """The subset of ``options`` (e.g. a config's beta_start and beta_end) that
  the registered schedule ``name`` takes; the rest do not apply to it."""
  fn = _BETA_SCHEDULES.find(name)
  if fn is None:
    return {}
  params = inspect.signature(fn).parameters
  return {k: v for k, v in options.items()
          if k in params and k != "num_timesteps" and v is not None}


def betas_from_config(name: str, num_timesteps: int,
                      betas: Optional[Sequence[float]] = None,
                      **options) -> np.ndarray:
  """float64 betas of a named schedule, or user-given ``betas`` (then
  ``name`` must be 'custom').

  ``options`` may hold settings of several schedules (a config's beta_start,
  beta_end, ...); each schedule gets only those it takes.
  """
  if betas is not None and len(betas):
    if name not in ("custom", None):
      raise ValueError("give either schedule.name or schedule.betas, not both "
                       "(set schedule.name='custom' for explicit betas)")
    arr = np.asarray(betas, dtype=np.float64)
    if arr.size != num_timesteps:
      raise ValueError(f"schedule.betas has {arr.size} entries but "
                       f"num_timesteps is {num_timesteps}")
    return arr
  return get_betas(name, num_timesteps, **schedule_kwargs(name, **options))


def schedule_from_config(name: str, num_timesteps: int,
                         betas: Optional[Sequence[float]] = None,
                         **options) -> DiffusionSchedule:
  """:func:`make_schedule` of :func:`betas_from_config`."""
  return make_schedule(betas_from_config(name, num_timesteps, betas,
                                         **options))
