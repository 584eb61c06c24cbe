"""Stride-1 'SAME' convolutions with a choice of gradient.

On 2026-11-25 XLA's CPU gradient of a 3x3 convolution with respect to the
kernel (lowered as another convolution, over the batch) measured several
times slower than PyTorch's on the U-Net's 32x32 layers.
``backward='matmul'`` keeps XLA's forward convolution and computes the
backward pass from two well-optimised pieces:

- d x: the convolution of d y with the kernel flipped in space and with
  its in/out axes swapped (a forward convolution);
- d kernel: patches(x)^T @ d y, one matrix product, where patches(x)
  [B*H*W, kh*kw*C] holds each output position's receptive field.

Both are the exact gradient (the same sums in another order); the tests
compare them with ``jax.grad`` of ``lax.conv_general_dilated``.
``backward='xla'`` is XLA's own gradient. ``'auto'`` (the default) is
'xla' on every backend: it was 'matmul' on the CPU for 32x32 layers until
2026-12-02, when an in-process A/B on 2 CPU cores (jax 0.10.2, the same
version, whose CPU backend runs convolutions through YNNPACK) found XLA's
gradient faster, against the earlier separate-process figures:
one conv's gradient (xla / matmul) 56 / 95 ms at 64x32x32x32, 46 / 62 ms at
64x16x16x64, and the tiny32 U-Net's train step 41.9 / 23.6 img/s
(docs/benchmarks.md). 'matmul' stays for CPU builds where XLA's kernel
gradient is the slow part, and the microbatched train step uses it
(``training.make_train_step``): inside a ``lax.scan`` XLA's kernel
gradient ran 10x slower than outside one on the CPU (2026-12-03). The parameters are ``nn.Conv``'s (``kernel``
[kh, kw, C_in, C_out], ``bias`` [C_out]), so checkpoints do not depend on
the choice.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BACKWARDS = ("auto", "xla", "matmul")


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


def resolve_backward(backward: str) -> str:
  """The backward a layer uses: 'auto' -> 'xla' (see the module
  docstring), 'xla' and 'matmul' as named."""
  if backward not in BACKWARDS:
    raise ValueError(f"conv backward must be one of {BACKWARDS}, got "
                     f"{backward!r}")
  return "xla" if backward == "auto" else backward


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
    if resolve_backward(self.backward) == "matmul":
      y = conv_matmul_grad(x, kernel)
    else:
      y = _conv(x, kernel)
    return y + bias.astype(self.dtype)
