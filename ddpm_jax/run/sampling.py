"""What sample.py does: restore a workdir's checkpoint and write samples."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from ddpm_jax import data, from_config, images, paths, validation
from ddpm_jax.diffusion import FIXED_VARIANCES as VARIANCES
from ddpm_jax.interop import diffusers_config, sources
from ddpm_jax.interop import repo_ids, tf_checkpoint
from ddpm_jax.models.unet import eps_fn
from ddpm_jax.run import flag_checks, outputs, profile_window
from ddpm_jax.run.flags import FLAG_NAMES
from ddpm_jax.samplers import figures, generate, scan_progress
from ddpm_jax.samplers.registry import get_sampler


def _check(error: Optional[str]) -> None:
  """Raises ``error`` (one of :mod:`ddpm_jax.run.flag_checks`' messages) as
  a ValueError, for callers of these functions that are not the CLI."""
  if error is not None:
    raise ValueError(error)


def memory_bytes() -> int:
  """The memory one device can hold: an accelerator's own (``bytes_limit``),
  else the host's RAM (CPU devices share it)."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_memory(config, batch_size: int, memory_check: bool) -> None:
  """Refuses, in one line and before any array is made, a batch (of
  samples, or of images evaluated) whose activations need more than a
  device holds, by a lower bound
  (:func:`ddpm_jax.interop.diffusers_config.activation_bytes`: the first
  level's feature maps) for the batch's share of a device (of all the
  host's devices on the CPU, which share its RAM). ``memory_check``
  False (``--nomemory_check``) skips it."""
  if not memory_check:
    return
  size = int(config.data.image_size)
  per_image = diffusers_config.activation_bytes(
      size, int(config.model.ch), int(config.model.num_res_blocks))
  on_cpu = jax.local_devices()[0].platform == "cpu"
  share = (batch_size if on_cpu else
           -(-batch_size // max(jax.device_count(), 1)))
  need, have = per_image * share, memory_bytes()
  if need > have:
    where = "the host's RAM" if on_cpu else "one device's memory"
    raise ValueError(
        f"a batch of {batch_size} at {size}x{size} needs at least "
        f"{need / 2**30:.3g} GiB of activations, more than {where} "
        f"({have / 2**30:.3g} GiB): lower --batch_size, or pass "
        f"--nomemory_check to try anyway")


def apply_overrides(config, variance: Optional[str],
                    sampler: Optional[Dict[str, Any]] = None) -> None:
  """Sets the flags' ``config.sampling`` fields and checks the result
  (:func:`ddpm_jax.validation.validate_config`)."""
  for key, value in (sampler or {}).items():
    config.sampling[key] = value
  if variance:
    if variance not in VARIANCES:
      raise ValueError(f"--variance must be one of {VARIANCES}, got "
                       f"{variance!r}")
    learned = config.diffusion.learned_variance
    if learned:
      raise ValueError(f"--variance {variance} would replace this model's "
                       f"learned variance ({learned}): drop --variance")
    config.sampling.variance = variance
  validation.validate_config(config, FLAG_NAMES)


def set_compute_dtype(config, dtype: Optional[str]) -> None:
  """``--dtype``: the U-Net's compute dtype for this run ('float32' or
  'bfloat16'; None keeps the config's). Parameters, the schedule and the
  chain stay float32; the network's output is cast to float32."""
  if dtype is None:
    return
  if dtype not in from_config.COMPUTE_DTYPES:
    raise ValueError(f"--dtype must be one of {from_config.COMPUTE_DTYPES}, "
                     f"got {dtype!r}")
  config.model.dtype = dtype


def _load_workdir(workdir: str, use_ema: bool, dtype: Optional[str]):
  config, params, step = sources.load_workdir(workdir, use_ema)
  set_compute_dtype(config, dtype)
  return config, params, step


def _draw_and_write(config, params, num: int, batch_size: int, seed: int,
                    prefix: str, explicit: bool, memory_check: bool,
                    profile: bool = False, **settings) -> Optional[str]:
  """Draws ``num`` samples (each batch split over every device of every
  process) and, on process 0 alone, writes them at ``prefix`` (claimed,
  :func:`ddpm_jax.run.outputs.claim`); returns it there, None on the other
  processes."""
  check_batch_memory(config, min(batch_size, num), memory_check)
  lead = jax.process_index() == 0
  if lead:
    prefix = outputs.claim(prefix, outputs.SAMPLES, explicit)
  with profile_window.traced(f"{prefix}_profile" if profile and lead
                             else None):
    x = generate.generate(config, from_config.make_model(config), params,
                          num, min(batch_size, num), seed)
  if not lead:
    return None
  images.write_samples(prefix, x, images.display_scale(config.data.image_size))
  outputs.write_settings(prefix, config, seed=seed, num=num, **settings)
  return prefix


def sample_from_workdir(workdir: str, num: int, batch_size: int, seed: int,
                        out: Optional[str] = None,
                        use_ema: bool = True,
                        variance: Optional[str] = None,
                        sampler: Optional[Dict[str, Any]] = None,
                        dtype: Optional[str] = None,
                        memory_check: bool = True,
                        profile: bool = False) -> Optional[str]:
  """Writes ``num`` samples of ``workdir``'s latest checkpoint; returns the
  output prefix (``.png``, ``.npz`` and the settings' ``.json`` are
  appended; :mod:`ddpm_jax.run.outputs` names it and never overwrites),
  or None on the processes of a multi-host job but the first, which draw
  their share of the samples and write nothing.
  ``sampler`` overrides ``config.sampling`` fields (sampler, steps, eta,
  spacing ...); ``dtype`` the compute dtype (:func:`set_compute_dtype`);
  ``memory_check`` refuses a batch too large (:func:`check_batch_memory`);
  ``profile`` writes a ``jax.profiler`` trace of the sampling (its
  compile included) into ``<prefix>_profile/``.
  """
  _check(flag_checks.count_error(num, batch_size))
  if jax.process_index() == 0:  # (the process that writes)
    outputs.check_writable(out, paths.join(workdir, "samples"))
  config, params, step = _load_workdir(workdir, use_ema, dtype)
  apply_overrides(config, variance, sampler)
  prefix = out or paths.join(
      workdir, "samples",
      f"sample_seed{seed}_step{step}{outputs.sampling_tag(config, use_ema)}")
  return _draw_and_write(config, params, num, batch_size, seed, prefix,
                         out is not None, memory_check, profile,
                         source=workdir, step=step, use_ema=use_ema)


def model_dir(path: str) -> str:
  """The folder of a --model (a diffusers directory, or the folder of a TF
  checkpoint prefix; for a Hub repo id, a local folder named after it,
  :func:`ddpm_jax.interop.repo_ids.output_folder`)."""
  if repo_ids.is_repo_id(path):
    return repo_ids.output_folder(path)
  return path.rstrip("/") if paths.isdir(path) else paths.dirname(path)


def sample_from_model(path: str, num: int, batch_size: int, seed: int,
                      out: Optional[str] = None, use_ema: bool = True,
                      image_size: Optional[int] = None,
                      variance: Optional[str] = None,
                      sampler: Optional[Dict[str, Any]] = None,
                      dtype: Optional[str] = None,
                      memory_check: bool = True,
                      profile: bool = False,
                      revision: Optional[str] = None) -> Optional[str]:
  """Writes ``num`` samples of a diffusers model directory, a Hub repo id
  (at ``revision``) or an original TF checkpoint (by default under
  samples/ in the model's folder, :func:`model_dir`); returns the output
  prefix. ``profile``: as :func:`sample_from_workdir`."""
  _check(flag_checks.count_error(num, batch_size))
  if jax.process_index() == 0:  # (the process that writes)
    outputs.check_writable(out, paths.join(model_dir(path), "samples"))
  config, params, _ = sources.load_model(path, image_size, use_ema, revision)
  set_compute_dtype(config, dtype)
  apply_overrides(config, variance, sampler)
  tag = outputs.sampling_tag(config, use_ema)
  if tf_checkpoint.is_tf_checkpoint(path) and not paths.isdir(path):
    tag = f"_{paths.basename(path)}{tag}"  # model.ckpt-NNNN
  prefix = out or paths.join(model_dir(path), "samples",
                             f"sample_seed{seed}{tag}")
  return _draw_and_write(config, params, num, batch_size, seed, prefix,
                         out is not None, memory_check, profile, source=path,
                         use_ema=use_ema)


def _held_out(config, indices: Sequence[int]) -> np.ndarray:
  """Images ``indices`` of the config's held-out split, in [-1, 1]."""
  _check(flag_checks.indices_error(indices))
  split = config.data.eval_split
  pool = np.concatenate(list(data.eval_batches(config, split, 256,
                                               max(indices) + 1)))
  if max(indices) >= len(pool):
    raise ValueError(f"the {split} split has {len(pool)} images; index "
                     f"{max(indices)} does not exist")
  return pool[list(indices)]


def _forward_steps(config, t: Optional[int]) -> int:
  big_t = config.diffusion.num_timesteps
  t = big_t // 2 if t is None else int(t)
  if not 0 <= t <= big_t:
    raise ValueError(f"--t must be in [0, {big_t}] (forward steps), got {t}")
  return t


def progressive_from_workdir(workdir: str, every: int, num: int, seed: int,
                             out: Optional[str] = None, use_ema: bool = True,
                             sampler: Optional[Dict[str, Any]] = None,
                             dtype: Optional[str] = None) -> str:
  """Fig. 6: ``num`` samples with their x_t and predicted x_0 every
  ``every`` steps, written by :func:`ddpm_jax.images.write_progression`;
  returns the output prefix."""
  _check(flag_checks.count_error(num, num))
  outputs.check_writable(out, paths.join(workdir, "samples"))
  config, params, step = _load_workdir(workdir, use_ema, dtype)
  apply_overrides(config, None, sampler)
  size, ch = config.data.image_size, config.data.channels
  options = from_config.sampler_options(config)
  steps = int(config.sampling.steps) or config.diffusion.num_timesteps
  with scan_progress.chain_bar(f"progression of {num} ({steps} steps)",
                               steps) as ticks:
    _, traj = get_sampler(config.sampling.sampler)(
        params, eps_fn(from_config.make_model(config)),
        from_config.make_betas(config), jax.random.PRNGKey(seed),
        (num, size, size, ch), return_every=every, progress_every=ticks,
        **options)
    traj = jax.device_get(traj)
  prefix = outputs.claim(out or paths.join(
      workdir, "samples", f"progressive{every}_seed{seed}_step{step}"
      f"{outputs.sampling_tag(config, use_ema)}"), outputs.PROGRESSION,
                         out is not None)
  images.write_progression(prefix, traj,
                           images.display_scale(size))
  outputs.write_settings(prefix, config, source=workdir, step=step,
                         seed=seed, use_ema=use_ema, num=num, every=every)
  return prefix


def partial_from_workdir(workdir: str, indices: Sequence[int],
                         t: Optional[int], num: int, seed: int,
                         out: Optional[str] = None,
                         use_ema: bool = True,
                         dtype: Optional[str] = None) -> str:
  """Fig. 7: for each held-out image, one x_t after ``t`` forward steps and
  ``num`` reverse chains from it. Writes a grid (a row per image: x_0, x_t,
  the samples) and ``.npz`` (``x_t``, ``samples``); returns the prefix."""
  _check(flag_checks.count_error(num, num))
  outputs.check_writable(out, paths.join(workdir, "samples"))
  config, params, step = _load_workdir(workdir, use_ema, dtype)
  t = _forward_steps(config, t)
  x0 = _held_out(config, indices)
  with scan_progress.chain_bar(
      f"{num} chains from x_t of {len(x0)} images ({t} steps)", t) as ticks:
    x_t, samples = jax.device_get(figures.partial_chain(
        params, eps_fn(from_config.make_model(config)),
        from_config.make_schedule(config), x0, t, jax.random.PRNGKey(seed),
        num, progress_every=ticks, **figures.chain_options(config)))
  rows = np.concatenate([x0[:, None], np.asarray(x_t)[:, None],
                         np.asarray(samples)], axis=1)
  prefix = outputs.claim(out or paths.join(
      workdir, "samples", f"partial_t{t}_seed{seed}_step{step}"
      f"{outputs.model_tag(config, use_ema)}"), outputs.STRIP, out is not None)
  outputs.write_settings(prefix, config, source=workdir, step=step,
                         seed=seed, use_ema=use_ema, num=num, t=t,
                         indices=list(indices))
  images.write_strip(prefix + ".png", rows,
                     images.display_scale(config.data.image_size))
  images.write_npz(prefix + ".npz", x0=images.to_uint8(x0),
                   x_t=np.asarray(x_t), samples=images.to_uint8(samples))
  return prefix


def interpolate_from_workdir(workdir: str, pair: Sequence[int],
                             t: Optional[int], num_lambdas: int, seed: int,
                             out: Optional[str] = None,
                             use_ema: bool = True,
                             dtype: Optional[str] = None) -> str:
  """Fig. 8: held-out images ``pair`` encoded to x_t (``t`` forward steps),
  mixed at ``num_lambdas`` evenly spaced lambdas in [0, 1] and decoded with
  shared noise. Writes a strip (x0_a, the decodings, x0_b) and ``.npz``
  (``lambdas``, ``images``); returns the prefix."""
  _check(flag_checks.interpolation_error(pair, num_lambdas))
  outputs.check_writable(out, paths.join(workdir, "samples"))
  config, params, step = _load_workdir(workdir, use_ema, dtype)
  t = _forward_steps(config, t)
  a, b = _held_out(config, pair)
  lambdas = np.linspace(0.0, 1.0, num_lambdas)
  with scan_progress.chain_bar(
      f"decoding {num_lambdas} interpolations ({t} steps)", t) as ticks:
    mixed = jax.device_get(figures.interpolate(
        params, eps_fn(from_config.make_model(config)),
        from_config.make_schedule(config), a, b, lambdas, t,
        jax.random.PRNGKey(seed), progress_every=ticks,
        **figures.chain_options(config)))
  strip = np.concatenate([a[None], np.asarray(mixed), b[None]])[None]
  prefix = outputs.claim(out or paths.join(
      workdir, "samples",
      f"interpolate_{pair[0]}_{pair[1]}_t{t}_seed{seed}_step{step}"
      f"{outputs.model_tag(config, use_ema)}"), outputs.STRIP, out is not None)
  outputs.write_settings(prefix, config, source=workdir, step=step,
                         seed=seed, use_ema=use_ema, t=t, pair=list(pair),
                         lambdas=num_lambdas)
  images.write_strip(prefix + ".png", strip,
                     images.display_scale(config.data.image_size))
  images.write_npz(prefix + ".npz", lambdas=lambdas,
                   images=images.to_uint8(mixed))
  return prefix
