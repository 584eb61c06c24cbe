"""Stride-1 'SAME' convolutions whose gradient XLA's CPU backend runs fast.

XLA on the CPU runs a forward convolution well, but its gradient with
respect to the kernel (lowered as another convolution, over the batch) is
several times slower than PyTorch's on the U-Net's 32x32 layers: most of
a CPU training step went there. ``backward='matmul'`` keeps XLA's forward
convolution and computes the backward pass from two well-optimised pieces:

- d x: the convolution of d y with the kernel flipped in space and with
  its in/out axes swapped (a forward convolution);
- d kernel: patches(x)^T @ d y, one matrix product, where patches(x)
  [B*H*W, kh*kw*C] holds each output position's receptive field.

Both are the exact gradient (the same sums in another order); the tests
compare them with ``jax.grad`` of ``lax.conv_general_dilated``.
``backward='xla'`` is XLA's own gradient (best on GPUs and TPUs, where
cuDNN / the TPU compiler handle it). ``'auto'`` picks 'matmul' on the CPU
for layers of at least ``MATMUL_MIN_PIXELS`` (32x32) positions and 'xla'
everywhere else. Measured on 2 CPU cores, batch 64 (conv gradient, xla ->
matmul): 32x32x32 287 -> 154 ms; 16x16x64 124 -> 103 ms; 16x16x32
37 -> 42 ms; 8x8x64 26 -> 21 ms. Each matmul-backward layer also compiles
0.3-0.5 s longer, which small layers do not win back in the short runs
(tests, 8x8 digits) where compile time dominates. The parameters are
``nn.Conv``'s (``kernel`` [kh, kw, C_in, C_out], ``bias`` [C_out]), so
checkpoints do not depend on the choice.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BACKWARDS = ("auto", "xla", "matmul")
# 'auto' uses the matmul backward on the CPU from this many positions
# (H * W) of a layer's input up.
MATMUL_MIN_PIXELS = 32 * 32


def _conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  kh, kw = kernel.shape[:2]
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def patches(x: jnp.ndarray, kh: int, kw: int) -> jnp.ndarray:
  """[B, H, W, kh*kw*C]: at each position the zero-padded kh x kw
  neighbourhood of ``x``, ordered (row, column, channel) as a HWIO
  kernel's flattened leading axes."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh)
                          for j in range(kw)], axis=-1)


@jax.custom_vjp
def conv_matmul_grad(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """The stride-1 'SAME' convolution of NHWC ``x`` with an HWIO ``kernel``
  (odd sizes), differentiated by convolution and one matrix product."""
  return _conv(x, kernel)


def _conv_fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv_bwd(res: Tuple[jnp.ndarray, jnp.ndarray], dy: jnp.ndarray):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  dx = _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  cols = patches(x, kh, kw).reshape(-1, kh * kw * cin)
  dk = jnp.matmul(cols.T, dy.reshape(-1, cout),
                  preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


def resolve_backward(backward: str, pixels: int) -> str:
  """The backward used for a layer whose input has ``pixels`` (H * W)
  positions: 'auto' -> 'matmul' on the CPU from ``MATMUL_MIN_PIXELS`` up,
  'xla' otherwise and on other backends."""
  if backward not in BACKWARDS:
    raise ValueError(f"conv backward must be one of {BACKWARDS}, got "
                     f"{backward!r}")
  if backward == "auto":
    return ("matmul" if jax.default_backend() == "cpu"
            and pixels >= MATMUL_MIN_PIXELS else "xla")
  return backward


class Conv(nn.Module):
  """A stride-1 'SAME' ``nn.Conv`` (same parameters, same output) with the
  gradient chosen by ``backward`` (see the module docstring)."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  backward: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = self.kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
      raise ValueError(f"Conv takes odd kernel sizes, got {self.kernel_size}")
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if resolve_backward(self.backward, x.shape[1] * x.shape[2]) == "matmul":
      y = conv_matmul_grad(x, kernel)
    else:
      y = _conv(x, kernel)
    return y + bias.astype(self.dtype)
