"""The U-Net's convolutions with a choice of gradient: stride-1 'SAME'
(:class:`Conv`), stride 2 (the same class, for Downsample) and
upsample-then-conv as a sub-pixel convolution (:class:`UpsampleConv`).

XLA's CPU gradient of a 3x3 convolution with respect to the kernel
(lowered as another convolution, over the batch) measured several times
slower than PyTorch's on the U-Net's 32x32 layers.
``backward='matmul'`` keeps XLA's forward convolution and computes the
backward pass from two well-optimised pieces:

- d x: the convolution of d y with the kernel flipped in space and with
  its in/out axes swapped (a forward convolution); with a stride, d y @
  kernel^T added back to the pixels each window read;
- d kernel: patches(x)^T @ d y, one matrix product, where patches(x)^T
  [kh*kw*C, B*H*W] (:func:`patches_t`) holds each output position's
  receptive field.

Both are the exact gradient (the same sums in another order); the tests
compare them with ``jax.grad`` of ``lax.conv_general_dilated``.
``backward='xla'`` is XLA's own gradient. ``'auto'`` (the default) is
resolved in one place, :func:`resolve_backward`: 'matmul' on the CPU for
the sub-pixel upsampling layers and for every layer inside the
microbatched train step's ``lax.scan``, else 'xla'. A plain 3x3 layer's
'auto' was once 'matmul' on the CPU for 32x32 layers; an in-process A/B
(on a CPU backend that runs convolutions through YNNPACK) then found
XLA's gradient faster, both per layer and in the train step. 'matmul'
stays for CPU builds where XLA's kernel gradient is the slow part, and
the microbatched train step uses it (``train.make_train_step``): inside
a ``lax.scan`` XLA's kernel gradient runs much slower on the CPU than
outside one, and so do its gradients of the stride-2 convolution. The
figures are in docs/benchmarks.md, section 'Measurements behind design
choices'. The parameters are ``nn.Conv``'s (``kernel`` [kh, kw, C_in,
C_out], ``bias`` [C_out]), so checkpoints do not depend on the choice.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BACKWARDS = ("auto", "xla", "matmul")
UPSAMPLE_CONVS = ("subpixel", "repeat")

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def _same(kh: int, kw: int) -> Padding:
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def _conv(x: jnp.ndarray, kernel: jnp.ndarray,
          padding: Optional[Padding] = None, stride: int = 1) -> jnp.ndarray:
  """Convolution with ``stride`` in both directions, NHWC x HWIO;
  ``padding`` None is 'SAME' for odd kernels."""
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride),
      _same(*kernel.shape[:2]) if padding is None else padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _out_size(size: int, k: int, pad: Tuple[int, int], stride: int) -> int:
  return (size + pad[0] + pad[1] - k) // stride + 1


def patches_t(x: jnp.ndarray, kh: int, kw: int,
              padding: Optional[Padding] = None, stride: int = 1
              ) -> jnp.ndarray:
  """[kh*kw*C, B*H'*W']: column p holds the zero-padded window of ``x``
  that output position p of a kh x kw convolution with ``padding`` (None:
  'SAME', odd sizes) and ``stride`` reads, rows ordered (row, column,
  channel) as a HWIO kernel's flattened leading axes. Built from ``x`` in
  channel-major order, so that patches^T @ d y is a plain matrix product;
  the train step ran faster than with the [B*H'*W', kh*kw*C] layout
  (docs/benchmarks.md, 'Measurements behind design choices')."""
  padding = padding or _same(kh, kw)
  xt = jnp.pad(x.transpose(3, 0, 1, 2),
               ((0, 0), (0, 0), padding[0], padding[1]))
  h = _out_size(x.shape[1], kh, padding[0], stride)
  w = _out_size(x.shape[2], kw, padding[1], stride)
  return jnp.stack(
      [xt[:, :, i:i + stride * (h - 1) + 1:stride,
          j:j + stride * (w - 1) + 1:stride]
       for i in range(kh) for j in range(kw)]).reshape(kh * kw * x.shape[-1],
                                                       -1)


def _fold_patches(cols: jnp.ndarray, x_shape: Tuple[int, ...], kh: int,
                  kw: int, padding: Padding, stride: int) -> jnp.ndarray:
  """The adjoint of the patches (:func:`patches_t`, transposed):
  [B, H', W', kh*kw*C] -> [B, H, W, C],
  each window's entries added back to the pixels they were read from
  (every tap's slice spread by interior padding, then summed)."""
  b, h, w, _ = cols.shape
  c = x_shape[-1]
  hp = x_shape[1] + padding[0][0] + padding[0][1]
  wp = x_shape[2] + padding[1][0] + padding[1][1]
  cols = cols.reshape(b, h, w, kh, kw, c)
  total = None
  for i in range(kh):
    for j in range(kw):
      rows = (i, hp - i - stride * (h - 1) - 1, stride - 1)
      colz = (j, wp - j - stride * (w - 1) - 1, stride - 1)
      part = jax.lax.pad(cols[:, :, :, i, j, :], jnp.zeros((), cols.dtype),
                         ((0, 0, 0), rows, colz, (0, 0, 0)))
      total = part if total is None else total + part
  return total[:, padding[0][0]:padding[0][0] + x_shape[1],
               padding[1][0]:padding[1][0] + x_shape[2], :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_grad(x: jnp.ndarray, kernel: jnp.ndarray,
                     padding: Optional[Padding] = None,
                     stride: int = 1) -> jnp.ndarray:
  """The convolution of NHWC ``x`` with an HWIO ``kernel`` (``padding``
  None: 'SAME' for odd sizes; else ((top, bottom), (left, right));
  ``stride`` in both directions), differentiated by convolutions and
  matrix products."""
  return _conv(x, kernel, padding, stride)


def _conv_fwd(x, kernel, padding, stride):
  return _conv(x, kernel, padding, stride), (x, kernel)


def _conv_bwd(padding: Optional[Padding], stride: int,
              res: Tuple[jnp.ndarray, jnp.ndarray], dy: jnp.ndarray):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  padding = padding or _same(kh, kw)
  (top, bottom), (left, right) = padding
  flat_dy = dy.reshape(-1, cout)
  if stride == 1:
    # The transposed convolution: d y padded so that every input position
    # sees the kernel taps that read it.
    dx = _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2),
               ((kh - 1 - top, kh - 1 - bottom),
                (kw - 1 - left, kw - 1 - right)))
  else:
    # Strided: d patches = d y @ kernel^T, added back to the pixels each
    # window read. (XLA's own input gradient, a convolution of d y dilated
    # by the stride, is much slower than this inside a lax.scan on the
    # CPU; docs/benchmarks.md, 'Measurements behind design choices'.)
    dcols = jnp.matmul(flat_dy, kernel.reshape(-1, cout).T,
                       preferred_element_type=jnp.float32)
    dx = _fold_patches(dcols.reshape(dy.shape[:3] + (kh * kw * cin,)),
                       x.shape, kh, kw, padding, stride)
  dk = jnp.matmul(patches_t(x, kh, kw, padding, stride), flat_dy,
                  preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


LAYERS = ("conv", "subpixel")


def resolve_backward(backward: str, layer: str = "conv",
                     in_scan: bool = False,
                     platform: Optional[str] = None) -> str:
  """The backward a ``layer`` ('conv': stride 1 or 2; 'subpixel':
  :func:`upsample_conv`'s 2x2 kernel) runs, the one place 'auto' is
  resolved. 'xla' and 'matmul' stand as named. 'auto' is 'matmul' on the
  CPU (``platform``, default JAX's default backend) for sub-pixel layers
  and for every layer differentiated inside a ``lax.scan`` (``in_scan``:
  the microbatched train step), where XLA's own CPU gradients measured
  slow; else 'xla' (see the module docstring and docs/benchmarks.md,
  'Measurements behind design choices')."""
  if backward not in BACKWARDS:
    raise ValueError(f"conv backward must be one of {BACKWARDS}, got "
                     f"{backward!r}")
  if layer not in LAYERS:
    raise ValueError(f"conv layer must be one of {LAYERS}, got {layer!r}")
  if backward != "auto":
    return backward
  if (platform or jax.default_backend()) == "cpu" and (
      in_scan or layer == "subpixel"):
    return "matmul"
  return "xla"


def backward_plan(backward: str, in_scan: bool = False,
                  platform: Optional[str] = None) -> Dict[str, str]:
  """{layer: the backward it runs} for a model whose ``conv_backward`` is
  ``backward`` (:func:`resolve_backward` for each of :data:`LAYERS`)."""
  return {layer: resolve_backward(backward, layer, in_scan, platform)
          for layer in LAYERS}


def convolve(x: jnp.ndarray, kernel: jnp.ndarray, backward: str,
             padding: Optional[Padding] = None, stride: int = 1,
             layer: str = "conv") -> jnp.ndarray:
  """:func:`_conv` differentiated as ``backward`` says ('auto' resolved by
  :func:`resolve_backward` for ``layer``)."""
  if resolve_backward(backward, layer) == "matmul":
    return conv_matmul_grad(x, kernel, padding, stride)
  return _conv(x, kernel, padding, stride)


class Conv(nn.Module):
  """``nn.Conv`` (same parameters, same output) with the gradient chosen by
  ``backward`` (see the module docstring): stride 1 with 'SAME' padding
  and an odd kernel by default, or ``strides`` s with explicit
  ``padding`` ((top, bottom), (left, right)), as the U-Net's stride-2
  downsampling uses it."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  backward: str = "auto"
  strides: int = 1
  padding: Optional[Padding] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = self.kernel_size
    if self.padding is None and (kh % 2 == 0 or kw % 2 == 0):
      raise ValueError(f"Conv with 'SAME' padding takes odd kernel sizes, "
                       f"got {self.kernel_size}")
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padding = None if self.padding is None else tuple(
        tuple(p) for p in self.padding)
    y = convolve(x, kernel, self.backward, padding, self.strides)
    return y + bias.astype(self.dtype)


def _fold_taps(k: jnp.ndarray) -> jnp.ndarray:
  """[2 phases, 2 taps, ...] from the 3 rows of ``k`` (its leading axis):
  output row 2i reads upsampled rows 2i-1, 2i, 2i+1, that is input rows
  i-1, i, i, so its 2-row window (i-1, i) has weights (k0, k1 + k2); row
  2i+1 reads input rows i, i, i+1: window (i, i+1), weights (k0 + k1, k2).
  Plain additions, so no backend rounds the weights."""
  return jnp.stack([jnp.stack([k[0], k[1] + k[2]]),
                    jnp.stack([k[0] + k[1], k[2]])])


def subpixel_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
  """[2, 2, C, 4*O]: the 3x3 HWIO ``kernel`` of a convolution after a
  nearest-neighbour 2x upsampling, as one 2x2 kernel per output phase
  (the weights of taps that read the same input pixel summed); output
  channels ordered (row phase, column phase, O)."""
  rows = _fold_taps(kernel)                      # [pr, tr, 3, C, O]
  both = _fold_taps(jnp.moveaxis(rows, 2, 0))    # [pc, tc, pr, tr, C, O]
  k = both.transpose(3, 1, 4, 2, 0, 5)           # [tr, tc, C, pr, pc, O]
  return k.reshape(2, 2, kernel.shape[2], 4 * kernel.shape[3])


def upsample_conv(x: jnp.ndarray, kernel: jnp.ndarray,
                  backward: str = "auto") -> jnp.ndarray:
  """conv3x3_SAME(nearest_upsample_2x(x), kernel) without forming the
  upsampled image: one 2x2 convolution of ``x`` (padded by 1) with 4x the
  output channels, one per output phase, interleaved into [B, 2H, 2W, O].
  It reads each input pixel once per tap that touches it, 16 products per
  4 output pixels against 36: 2.25x fewer FLOPs (sub-pixel convolution).
  The sums are the same up to float rounding (a few taps' weights are
  added first). ``backward`` as in :class:`Conv`, with 'auto' resolved for
  the 'subpixel' layer (:func:`resolve_backward`): 'matmul' on the CPU,
  where XLA's gradient of this 2x2 kernel slowed the digits U-Net's train
  step and 'matmul' did not (docs/benchmarks.md, 'Measurements behind
  design choices')."""
  b, h, w, _ = x.shape
  out = kernel.shape[-1]
  k2 = subpixel_kernel(kernel)
  pad = ((1, 1), (1, 1))
  y = convolve(x, k2, backward, pad, layer="subpixel").reshape(
      b, h + 1, w + 1, 2, 2, out)
  # Phase (a, c) of output pixel (i, j) is window (i + a, j + c).
  rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in range(2)], 3)
          for a in range(2)]
  return jnp.stack(rows, 2).reshape(b, 2 * h, 2 * w, out)


class UpsampleConv(nn.Module):
  """Nearest-neighbour 2x upsampling followed by a 3x3 'SAME' convolution,
  with :class:`Conv`'s parameters (``kernel`` [3, 3, C, O], ``bias``).
  ``method`` 'subpixel' (default) computes it by :func:`upsample_conv`;
  'repeat' upsamples with ``jnp.repeat`` and convolves at full size."""
  features: int
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  backward: str = "auto"
  method: str = "subpixel"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.method not in UPSAMPLE_CONVS:
      raise ValueError(f"model.upsample_conv must be one of "
                       f"{UPSAMPLE_CONVS}, got {self.method!r}")
    kernel = self.param("kernel", self.kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.method == "subpixel":
      y = upsample_conv(x, kernel, self.backward)
    else:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      y = convolve(x, kernel, self.backward)
    return y + bias.astype(self.dtype)
