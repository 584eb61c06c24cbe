"""The PyTorch reference trainer of benchmarks/quality_parity.py: diffusers'
UNet2DModel with the architecture of ``config.model`` (the exporter's
mapping), trained in a plain PyTorch loop on ddpm-jax's recipe.

The recipe, as ddpm-jax's train step has it: L_simple (eq. 14) at t
uniform over [0, T) with the config's float32 schedule tables; the global
gradient norm clipped to ``optim.grad_clip``; Adam with the learning rate
``lr * min(1, s / warmup)`` at update s = 0, 1, ... (the first update at
learning rate 0); then the EMA ``decay * ema + (1 - decay) * params``,
starting from the initial weights; dropout in train mode; the batches of
``data.create_input_iter(config)`` in their order. Needs the test extra.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Optional, Tuple

import numpy as np

from benchmarks import common

# (update index s, x_0 as NCHW torch tensor) -> (t, noise NCHW).
Draws = Callable[[int, Any], Tuple[Any, Any]]


def initial_model(config):
  """UNet2DModel of ``config.model`` with PyTorch's default initialisation
  from ``torch.manual_seed(config.seed)``."""
  torch = common.require_reference()
  torch.manual_seed(int(config.seed))
  return common.torch_unet(config)


def jax_initial_params(config) -> Any:
  """The parameters ddpm-jax's training starts from for ``config``."""
  from ddpm_jax import from_config
  from ddpm_jax.train.state import create_train_state
  return create_train_state(config, from_config.make_model(config),
                            from_config.make_optimizer(config)).params


def to_torch_state(params: Any, config) -> dict:
  """ddpm-jax parameters -> a UNet2DModel state dict of torch tensors."""
  import torch
  from ddpm_jax.interop import diffusers_unet
  return {k: torch.from_numpy(np.array(v)) for k, v in
          diffusers_unet.state_dict_from_params(params, config.model).items()}


def to_jax_params(model, config) -> Any:
  """A UNet2DModel's weights -> ddpm-jax parameters (NumPy leaves)."""
  from ddpm_jax.interop import diffusers_unet
  state = {k: v.detach().cpu().numpy() for k, v in
           model.state_dict().items()}
  return diffusers_unet.params_from_state_dict(
      state, config.model, config.data.image_size, config.data.channels)


def train(config, out_dir: str, init: str = "torch",
          draws: Optional[Draws] = None) -> None:
  """Trains the reference for ``training.num_steps`` updates and writes its
  EMA weights to ``out_dir`` as a diffusers model folder (with the
  config's scheduler). ``init``: 'torch' (PyTorch's default) or 'jax'
  (ddpm-jax's initial parameters for the same config). ``draws`` replaces
  the torch generator seeded with ``config.seed`` that draws t and the
  noise."""
  import torch
  from ddpm_jax import data, from_config
  from ddpm_jax.interop import diffusers_scheduler, diffusers_unet
  if init not in ("torch", "jax"):
    raise ValueError(f"init must be 'torch' or 'jax', got {init!r}")
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  model = initial_model(config)
  if init == "jax":
    model.load_state_dict(to_torch_state(jax_initial_params(config), config))
  model.train()
  ema = copy.deepcopy(model).eval().requires_grad_(False)
  o, tr = config.optim, config.training
  opt = torch.optim.Adam(model.parameters(), lr=float(o.learning_rate),
                         betas=(float(o.beta1), float(o.beta2)),
                         eps=float(o.eps))
  warmup = int(o.warmup_steps)
  lr = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(1.0, s / warmup) if warmup > 0 else 1.0)
  sched = from_config.make_schedule(config)
  sqrt_ab = torch.from_numpy(np.array(sched.sqrt_alphas_cumprod))
  sqrt_1m = torch.from_numpy(np.array(
      sched.sqrt_one_minus_alphas_cumprod))
  gen = torch.Generator().manual_seed(int(config.seed))

  def torch_draws(step, x0):
    del step
    return (torch.randint(0, sched.num_timesteps, (x0.shape[0],),
                          generator=gen),
            torch.randn(x0.shape, generator=gen))

  draws = draws or torch_draws
  batches = data.create_input_iter(config)
  decay = float(tr.ema_decay)
  for step in range(int(tr.num_steps)):
    x0 = torch.from_numpy(np.asarray(next(batches)[0])).permute(0, 3, 1, 2)
    t, noise = draws(step, x0)
    x_t = (sqrt_ab[t].view(-1, 1, 1, 1) * x0 +
           sqrt_1m[t].view(-1, 1, 1, 1) * noise)
    loss = torch.mean((model(x_t, t).sample - noise) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip and o.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), float(o.grad_clip))
    opt.step()
    lr.step()
    with torch.no_grad():
      for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p, alpha=1.0 - decay)
    if (step + 1) % max(1, int(tr.log_every)) == 0:
      common.say(f"{out_dir}: step {step + 1}: loss {loss.item():.5f}")
  diffusers_unet.write_model_dir(
      out_dir, to_jax_params(ema, config), config.model,
      config.data.image_size, config.data.channels,
      diffusers_scheduler.scheduler_config_from_settings(config))
