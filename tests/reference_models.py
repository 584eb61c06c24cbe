"""A toy eps-model written twice, in JAX and in PyTorch, with the same
weights: the parity tests push the same x_t and t through both so that the
diffusion formulas are compared on identical model outputs.

eps(x, t) = tanh(x * w_c + b_c * t / 1000 + x_mean * u_c), per channel c,
where x_mean is the per-example mean of x (so pixels interact). With
weights for k*C channels the input is tiled k times along channels, so a
model with 2C outputs (a learned variance) is the same formula.

Self-conditioned variant (weights from ``toy_weights(C, self_condition=
True)``): the input is ``concat([x0_estimate, x_t])`` (2C channels, the
estimate zeros when absent, lucidrains' order) and the argument of tanh
gains ``+ x0_estimate * s_c``.
"""

import jax.numpy as jnp
import numpy as np


def toy_weights(channels: int, seed: int = 0, self_condition: bool = False):
  rng = np.random.default_rng(seed)
  keys = ("w", "b", "u", "s") if self_condition else ("w", "b", "u")
  return {k: rng.normal(size=channels).astype(np.float32) for k in keys}


def toy_apply_jax(params, x_t, t, dropout_rng=None):
  """NHWC JAX version; matches :class:`ToyTorchModel`."""
  del dropout_rng
  est = None
  if "s" in params:  # self-conditioned: the input is [estimate, x_t]
    c = x_t.shape[-1] // 2
    est, x_t = x_t[..., :c], x_t[..., c:]
  t = jnp.asarray(t, jnp.float32).reshape(-1, 1, 1, 1)
  mean = jnp.mean(x_t, axis=(1, 2, 3), keepdims=True)
  k = params["w"].shape[0] // x_t.shape[-1]
  x = jnp.tile(x_t, (1, 1, 1, k))
  arg = x * params["w"] + params["b"] * t / 1000.0 + mean * params["u"]
  if est is not None:
    arg = arg + jnp.tile(est, (1, 1, 1, k)) * params["s"]
  return jnp.tanh(arg)


def make_torch_model(torch, params, channels: int):
  """NCHW PyTorch version, with the attributes lucidrains' GaussianDiffusion
  reads (channels, out_dim, self_condition)."""

  class ToyTorchModel(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.channels = channels
      self.out_dim = len(params["w"])
      self.self_condition = "s" in params
      for k, v in params.items():
        self.register_buffer(k, torch.from_numpy(np.asarray(v)).view(
            1, -1, 1, 1))

    def forward(self, x, t, x_self_cond=None):
      t = t.to(torch.float32).view(-1, 1, 1, 1)
      mean = x.mean(dim=(1, 2, 3), keepdim=True)
      k = self.out_dim // self.channels
      arg = x.repeat(1, k, 1, 1) * self.w + self.b * t / 1000.0 + \
          mean * self.u
      if self.self_condition:
        if x_self_cond is None:
          x_self_cond = torch.zeros_like(x)
        arg = arg + x_self_cond.repeat(1, k, 1, 1) * self.s
      return torch.tanh(arg)

  return ToyTorchModel()


def nchw(x):
  return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def nhwc(x):
  return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 2, 3, 1)))


def assert_close(actual, desired, rtol=1e-5, atol=1e-6, err_msg=""):
  """Elementwise |a - d| <= atol + rtol * |d| (numpy's assert_allclose)."""
  np.testing.assert_allclose(np.asarray(actual, np.float64),
                             np.asarray(desired, np.float64), rtol=rtol,
                             atol=atol, err_msg=err_msg)


def assert_close_to_terms(actual, desired, term_scale, rtol=1e-5,
                          err_msg=""):
  """|a - d| <= rtol * term_scale, elementwise.

  For a value computed as a sum of large terms that cancel (x0 from eps at
  large t is 1/sqrt(abar) * x_t - sqrt(1/abar - 1) * eps, with terms ~100x
  the result), float32 rounding is relative to the terms' magnitudes
  ``term_scale``, not to the result; this is the 1e-5 relative bound stated
  against them.
  """
  a, d = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  bad = np.abs(a - d) > rtol * np.asarray(term_scale, np.float64) + 1e-7
  if bad.any():
    i = np.argmax(np.abs(a - d) - rtol * term_scale)
    raise AssertionError(
        f"{err_msg}: {bad.sum()} of {bad.size} beyond {rtol} x term scale; "
        f"worst at flat index {i}: {a.flat[i]} vs {d.flat[i]} (scale "
        f"{np.asarray(term_scale).flat[i]})")
