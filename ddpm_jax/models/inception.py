"""Inception-v3 as FID uses it (the TF graph of 2015-12-05 that TTUR and
pytorch-fid evaluate), in Flax, NHWC, inference only.

It differs from the ImageNet Inception-v3 of torchvision in its blocks:
the A, C and first E blocks average-pool without counting the padding,
the last E block max-pools in its pool branch, and the head has 1008
classes. The forward pass takes images in [0, 1], resizes them to 299 x
299 bilinearly (half-pixel centres, no antialiasing: PyTorch's
``interpolate(mode='bilinear', align_corners=False)``, which pytorch-fid
uses), maps them to [-1, 1] and returns the 2048-d pool3 features and the
1008 logits (for the Inception Score).

Parameter names follow the PyTorch module names (``Mixed_5b/branch1x1/
conv``, ``.../bn``), so a state dict converts name for name
(:mod:`ddpm_jax.interop.inception_weights`).
"""

from __future__ import annotations

from typing import Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

IMAGE_SIZE = 299
NUM_LOGITS = 1008
FEATURE_DIM = 2048

Pad = Union[int, Tuple[int, int]]


class FrozenBatchNorm(nn.Module):
  """BatchNorm with stored statistics (``mean``, ``var``) as parameters:
  y = (x - mean) / sqrt(var + eps) * scale + bias."""
  eps: float = 1e-3

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  stride: int = 1
  padding: Pad = 0

  @nn.compact
  def __call__(self, x):
    pad = ((self.padding, self.padding) if isinstance(self.padding, int)
           else self.padding)
    x = nn.Conv(self.features, self.kernel, (self.stride, self.stride),
                padding=((pad[0], pad[0]), (pad[1], pad[1])), use_bias=False,
                name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x):
  """3x3 average, stride 1, padding 1, the padding not counted."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x, stride: int, padding: int = 0):
  return nn.max_pool(x, (3, 3), (stride, stride),
                     ((padding, padding), (padding, padding)))


class BlockA(nn.Module):
  """35 x 35 block (Mixed_5b-d)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class BlockB(nn.Module):
  """35 -> 17 reduction (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class BlockC(nn.Module):
  """17 x 17 block with factorised 7x7 convolutions (Mixed_6b-e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c7, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class BlockD(nn.Module):
  """17 -> 8 reduction (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class BlockE(nn.Module):
  """8 x 8 block with split 1x3 / 3x1 branches (Mixed_7b, 7c); the pool
  branch averages (7b) or, in the FID graph's last block, max-pools
  (7c)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                         axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         axis=-1)
    pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] float64 weights of 1-D bilinear resizing with
  half-pixel centres, source coordinates clamped at 0 and no antialiasing
  (PyTorch's ``align_corners=False``)."""
  scale = size_in / size_out
  src = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in))
  np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(size_out), hi), frac)
  return m


def resize_bilinear(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """NHWC images resized to ``size`` x ``size`` (:func:`bilinear_matrix`
  along each axis)."""
  mh = jnp.asarray(bilinear_matrix(x.shape[1], size), jnp.float32)
  mw = jnp.asarray(bilinear_matrix(x.shape[2], size), jnp.float32)
  return jnp.einsum("ph,nhwc,qw->npqc", mh, x, mw)


class FIDInception(nn.Module):
  """(pool3 features [B, 2048], logits [B, 1008]) of images [B, H, W, 3]
  in [0, 1]."""
  resize: bool = True

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    if self.resize:
      x = resize_bilinear(x, IMAGE_SIZE)
    x = 2.0 * x - 1.0
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = BlockA(pool, name=name)(x)
    x = BlockB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = BlockC(c7, name=name)(x)
    x = BlockD(name="Mixed_7a")(x)
    x = BlockE(name="Mixed_7b")(x)
    x = BlockE(max_pool=True, name="Mixed_7c")(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, name="fc")(features)
    return features, logits

