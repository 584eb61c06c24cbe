"""Training: the state (:mod:`.state`), one step and its update
(:mod:`.step`, Algorithm 1), and how the step computes its gradient
(:mod:`.grads`). The loop that runs it is :mod:`ddpm_jax.run.train_loop`.

The names below are importable from ``ddpm_jax.train``; each submodule is
loaded on first use, so that reading a checkpoint (which needs only
:mod:`.state`) does not load the step.
"""

import importlib

_EXPORTS = {
    "AUTO_MICROBATCH_BYTES": "grads", "microbatch_size": "grads",
    "step_backward_plan": "grads", "step_conv_backward": "grads",
    "step_microbatch_size": "grads", "step_platform": "grads",
    "TrainState": "state", "create_train_state": "state",
    "train_state_shapes": "state",
    "apply_gradients": "step", "ema_update": "step",
    "make_train_step": "step", "train_step": "step",
    "make_multi_step": "step", "multi_step": "step",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'ddpm_jax.train' has no attribute {name!r}")
  module = importlib.import_module(f"ddpm_jax.train.{_EXPORTS[name]}")
  return getattr(module, name)


def __dir__():
  return __all__
