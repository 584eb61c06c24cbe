"""The paper's U-Net (Ho et al. 2020, Appendix B) in ``flax.linen``, NHWC.

A PixelCNN++-style U-Net: a Wide-ResNet backbone with group normalisation,
a sinusoidal timestep embedding added in every residual block, single-head
self-attention at the listed resolutions and in the middle, and resampling
by convolution. It follows the original ``diffusion_tf/models/unet.py``
layer for layer, so it has the parameter count of diffusers' ``UNet2DModel``
in the google/ddpm-* configuration (35,746,307 for CIFAR-10).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.conv import Conv, UpsampleConv
from ddpm_jax.models.norm import GroupNorm

# The original initialises every layer with variance_scaling(1, 'fan_avg',
# 'uniform'); the last layer of each residual branch with (almost) zero.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros_init = nn.initializers.zeros


def timestep_embedding(t: jnp.ndarray, dim: int, *,
                       flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                       max_period: float = 10000.0) -> jnp.ndarray:
  """Sinusoidal embedding of integer timesteps (the Transformer's, Sec. 3.3).

  [sin(t w_i), cos(t w_i)] with w_i = max_period^(-i / (d/2 - freq_shift)),
  i = 0 .. d/2 - 1. The original code uses freq_shift=1 and sin first;
  diffusers' ``Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`` is the
  same function, and we compute the frequencies in its float32 operation
  order so that imported models agree with it to the last bit of w_i.
  """
  if dim % 2 or dim < 4:
    raise ValueError(f"timestep embedding dim must be even and >= 4, got {dim}")
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(exponent / (half - freq_shift))
  args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos],
                         axis=-1)


ACTIVATIONS = {
    "swish": nn.swish, "silu": nn.swish,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
}


def activation(name: str):
  """The nonlinearity called ``name`` (swish/silu, mish, gelu, relu)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of "
                     f"{sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


DROPOUT_RNGS = ("threefry4x32", "threefry2x32")


def _is_typed_key(key: jax.Array) -> bool:
  return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


# (batch rows, first row) of the slice of a batch being traced.
_BATCH_SLICES: List[Tuple[int, Any]] = []


@contextlib.contextmanager
def dropout_over_batch_slice(total_rows: int, first_row: Any
                             ) -> Iterator[None]:
  """Within this context (entered while a function of rows ``first_row``
  onwards of a batch of ``total_rows`` is traced: a ``shard_map`` body's
  slice, or one pass of a microbatched gradient), each :class:`Dropout`
  draws its mask for the whole batch and keeps the rows it holds: the
  masks of the unsliced step, bit for bit. ``first_row`` may be traced;
  XLA computes only the slice (the generators are counter-based)."""
  _BATCH_SLICES.append((int(total_rows), first_row))
  try:
    yield
  finally:
    _BATCH_SLICES.pop()


class Dropout(nn.Module):
  """Inverted dropout (``nn.Dropout``'s semantics and rng stream) whose
  keep-mask bits come from the PRNG ``rng_impl``.

  The key is the one ``nn.Dropout`` would draw (``make_rng('dropout')`` of a
  module of the same name). 'threefry2x32' uses it as it is: ``nn.Dropout``
  bit for bit. 'threefry4x32' (the default: Threefry-4x32-20, the 4-word
  member of the same Random123 family) takes the 128 bits of its
  ``split`` into two keys. JAX lowers threefry2x32 on the CPU as a rolled
  loop that XLA cannot fuse, so its masks cost several times those of
  threefry4x32, which is unrolled and fused (docs/benchmarks.md,
  'Measurements behind design choices'). Both are counter-based, so the
  mask does not depend on how the batch is sharded. (JAX's Philox
  generators, as fast, fail to compile on a sharded batch in jax 0.10.2.)
  """
  rate: float
  rng_impl: str = "threefry4x32"

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if self.rng_impl not in DROPOUT_RNGS:
      raise ValueError(f"model.dropout_rng_impl must be one of "
                       f"{DROPOUT_RNGS}, got {self.rng_impl!r}")
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    key = self.make_rng("dropout")
    if self.rng_impl == "threefry4x32":
      pair = jax.random.split(key)
      data = jax.random.key_data(pair) if _is_typed_key(pair) else pair
      key = jax.random.wrap_key_data(data.reshape(4), impl="threefry4x32")
    keep_prob = 1.0 - self.rate
    if _BATCH_SLICES:
      total, first = _BATCH_SLICES[-1]
      keep = jax.random.bernoulli(key, keep_prob, (total,) + x.shape[1:])
      keep = jax.lax.dynamic_slice_in_dim(keep, first, x.shape[0], axis=0)
    else:
      keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


def _norm(num_groups: int, eps: float, name: str) -> GroupNorm:
  # Two-pass variance, as PyTorch and TF compute it (ddpm_jax/models/norm.py).
  return GroupNorm(num_groups=num_groups, epsilon=eps, name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv, + temb projection, GroupNorm-swish-dropout-conv,
  + (1x1-projected) input."""
  out_ch: int
  dropout: float = 0.0
  num_groups: int = 32
  norm_eps: float = 1e-6
  act: str = "swish"
  dtype: Any = jnp.float32
  conv_backward: str = "auto"
  dropout_rng_impl: str = "threefry4x32"

  @nn.compact
  def __call__(self, x, temb, train: bool = False):
    act = activation(self.act)
    h = act(_norm(self.num_groups, self.norm_eps, "norm1")(x))
    h = Conv(self.out_ch, kernel_init=default_init, dtype=self.dtype,
             backward=self.conv_backward, name="conv1")(h)
    h = h + nn.Dense(self.out_ch, kernel_init=default_init, dtype=self.dtype,
                     name="temb_proj")(act(temb))[:, None, None, :]
    h = act(_norm(self.num_groups, self.norm_eps, "norm2")(h))
    h = Dropout(self.dropout, self.dropout_rng_impl)(
        h, deterministic=not train)
    h = Conv(self.out_ch, kernel_init=zeros_init, dtype=self.dtype,
             backward=self.conv_backward, name="conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, kernel_init=default_init, dtype=self.dtype,
                   name="nin_shortcut")(x)
    return x + h


# How AttnBlock computes softmax(q k^T / sqrt(d)) v; the parameters and the
# result are the same (up to float rounding) whichever is chosen.
ATTENTION_IMPLS = ("matmul", "xla", "cudnn")


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
           impl: str = "matmul") -> jnp.ndarray:
  """softmax(q k^T / sqrt(d)) v for [B, N, heads, d] inputs, the softmax
  over the keys in float32.

  ``impl``: 'matmul' (two batched products with the head axis first),
  'xla' or 'cudnn' (``jax.nn.dot_product_attention`` with that
  implementation; 'cudnn' is cuDNN's fused attention, on a GPU only, in
  bfloat16 or float16: float32 inputs compute as 'matmul').
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl must be one of "
                     f"{ATTENTION_IMPLS}, got {impl!r}")
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError("model.attention_impl='cudnn' needs a GPU (cuDNN's "
                       "fused attention): set it to 'matmul' or 'xla'")
    if q.dtype == jnp.float32:
      impl = "matmul"
  if impl != "matmul":
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
  # [B, heads, N, d], so that both products are plain batched matmuls
  # (with one head the transposes are free); XLA's CPU backend runs an
  # einsum with the head axis in the middle more slowly (docs/benchmarks.md,
  # 'Measurements behind design choices').
  q, k, v = (y.transpose(0, 2, 1, 3) for y in (q, k, v))
  w = jnp.matmul(q, k.transpose(0, 1, 3, 2)) * (q.shape[-1]**-0.5)
  w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.matmul(w, v).transpose(0, 2, 1, 3)


class AttnBlock(nn.Module):
  """Self-attention over all H*W positions, residual. One head of width C
  (the paper's) unless ``head_dim`` splits C into C / head_dim heads;
  ``attention_impl`` chooses how it is computed (:func:`attend`)."""
  num_groups: int = 32
  norm_eps: float = 1e-6
  head_dim: Optional[int] = None
  dtype: Any = jnp.float32
  attention_impl: str = "matmul"

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    head_dim = self.head_dim or c
    if c % head_dim:
      raise ValueError(f"attention head_dim {head_dim} does not divide the "
                       f"{c} channels")
    heads = c // head_dim
    h = _norm(self.num_groups, self.norm_eps, "norm")(x)
    dense = functools.partial(nn.Dense, c, kernel_init=default_init,
                              dtype=self.dtype)
    q, k, v = (dense(name=n)(h).reshape(b, hgt * wid, heads, head_dim)
               for n in ("q", "k", "v"))
    h = attend(q, k, v, self.attention_impl).reshape(b, hgt, wid, c)
    h = nn.Dense(c, kernel_init=zeros_init, dtype=self.dtype,
                 name="proj_out")(h)
    return x + h


class Downsample(nn.Module):
  """Stride-2 3x3 conv, or 2x2 average pooling.

  ``padding=0`` pads as TF's 'SAME' does on even sizes (0 before, 1 after:
  the original code, diffusers' ``downsample_padding=0``); ``padding=1``
  pads 1 on both sides (diffusers' default). The parameters are
  ``nn.Conv``'s; ``conv_backward`` as in :class:`Conv`.
  """
  with_conv: bool = True
  padding: int = 0
  dtype: Any = jnp.float32
  conv_backward: str = "auto"

  @nn.compact
  def __call__(self, x):
    if not self.with_conv:
      return nn.avg_pool(x, (2, 2), strides=(2, 2))
    if self.padding not in (0, 1):
      raise ValueError(f"downsample padding must be 0 or 1, got "
                       f"{self.padding}")
    pad = (0, 1) if self.padding == 0 else (1, 1)
    return Conv(x.shape[-1], strides=2, padding=(pad, pad),
                kernel_init=default_init, dtype=self.dtype,
                backward=self.conv_backward, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv: by default computed
  as one 2x2 convolution per output phase at the input's size
  (``conv.upsample_conv``, 2.25x fewer FLOPs; ``method='repeat'``
  convolves the repeated image)."""
  with_conv: bool = True
  dtype: Any = jnp.float32
  conv_backward: str = "auto"
  method: str = "subpixel"

  @nn.compact
  def __call__(self, x):
    if not self.with_conv:
      return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return UpsampleConv(x.shape[-1], kernel_init=default_init,
                        dtype=self.dtype, backward=self.conv_backward,
                        method=self.method, name="conv")(x)


class UNet(nn.Module):
  """eps_theta(x_t, t): NHWC images in [-1, 1] and integer t -> eps.

  Attributes follow the original code: ``ch`` base width, ``ch_mult`` width
  multiplier per resolution level, ``num_res_blocks`` per level,
  ``attn_resolutions`` the spatial sizes with attention. The remaining
  fields default to the paper's choices and exist to express other models
  of the same family (diffusers ``UNet2DModel`` options): ``attn_head_dim``
  (None: one head), ``flip_sin_to_cos``/``freq_shift`` of the timestep
  embedding, ``downsample_padding`` and the residual blocks' ``act``.

  ``conv_backward`` chooses how the convolutions are
  differentiated (:mod:`ddpm_jax.models.conv`; same parameters and output),
  ``dropout_rng_impl`` the generator of the dropout masks
  (:class:`Dropout`), ``upsample_conv`` how the upsampling convolution is
  computed (:class:`Upsample`; same parameters, same output up to float
  rounding), ``attention_impl`` how attention is computed (:func:`attend`;
  same parameters, same output up to float rounding).

  ``num_classes`` > 0 makes it class-conditional: a learned embedding of
  the label (``num_classes`` rows, plus a null class at index
  ``num_classes`` for classifier-free guidance) is added to the time
  embedding; ``labels=None`` means the null class.
  """
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  num_groups: int = 32
  norm_eps: float = 1e-6
  attn_head_dim: Optional[int] = None
  flip_sin_to_cos: bool = False
  freq_shift: float = 1.0
  downsample_padding: int = 0
  act: str = "swish"
  dtype: Any = jnp.float32
  num_classes: int = 0
  conv_backward: str = "auto"
  dropout_rng_impl: str = "threefry4x32"
  upsample_conv: str = "subpixel"
  attention_impl: str = "matmul"

  @nn.compact
  def __call__(self, x, t, train: bool = False, labels=None):
    _, size, _, _ = x.shape
    levels = len(self.ch_mult)
    if size % (2**(levels - 1)):
      raise ValueError(f"image size {size} must be divisible by "
                       f"2**(len(ch_mult) - 1) = {2**(levels - 1)}")
    block = functools.partial(ResnetBlock, dropout=self.dropout,
                              num_groups=self.num_groups,
                              norm_eps=self.norm_eps, act=self.act,
                              dtype=self.dtype,
                              conv_backward=self.conv_backward,
                              dropout_rng_impl=self.dropout_rng_impl)
    attn = functools.partial(AttnBlock, num_groups=self.num_groups,
                             norm_eps=self.norm_eps,
                             head_dim=self.attn_head_dim, dtype=self.dtype,
                             attention_impl=self.attention_impl)

    temb = timestep_embedding(t, self.ch, flip_sin_to_cos=self.flip_sin_to_cos,
                              freq_shift=self.freq_shift)
    temb = nn.Dense(self.ch * 4, kernel_init=default_init, name="temb_dense0")(
        temb)
    temb = nn.Dense(self.ch * 4, kernel_init=default_init, name="temb_dense1")(
        nn.swish(temb))
    if self.num_classes:
      if labels is None:
        labels = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
      temb = temb + nn.Embed(self.num_classes + 1, self.ch * 4,
                             embedding_init=nn.initializers.normal(1.0),
                             name="class_embed")(labels)

    x = x.astype(self.dtype)
    hs = [Conv(self.ch, kernel_init=default_init, dtype=self.dtype,
               backward=self.conv_backward, name="conv_in")(x)]
    for i in range(levels):
      for j in range(self.num_res_blocks):
        h = block(self.ch * self.ch_mult[i], name=f"down_{i}_block_{j}")(
            hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(name=f"down_{i}_attn_{j}")(h)
        hs.append(h)
      if i != levels - 1:
        hs.append(Downsample(self.resamp_with_conv, self.downsample_padding,
                             self.dtype, self.conv_backward,
                             name=f"down_{i}_downsample")(hs[-1]))

    h = hs[-1]
    h = block(h.shape[-1], name="mid_block_1")(h, temb, train)
    h = attn(name="mid_attn_1")(h)
    h = block(h.shape[-1], name="mid_block_2")(h, temb, train)

    for i in reversed(range(levels)):
      for j in range(self.num_res_blocks + 1):
        h = block(self.ch * self.ch_mult[i], name=f"up_{i}_block_{j}")(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = Upsample(self.resamp_with_conv, self.dtype, self.conv_backward,
                     self.upsample_conv, name=f"up_{i}_upsample")(h)
    assert not hs

    h = nn.swish(_norm(self.num_groups, self.norm_eps, "norm_out")(h))
    h = Conv(self.out_ch, kernel_init=zeros_init, dtype=self.dtype,
             backward=self.conv_backward, name="conv_out")(h)
    return h.astype(jnp.float32)


def unet_from_config(model_cfg, image_channels: int,
                     out_channels: Optional[int] = None) -> UNet:
  """A :class:`UNet` from a ``config.model`` ConfigDict; ``out_channels``
  defaults to ``image_channels`` (2x for a learned variance)."""
  return UNet(ch=model_cfg.ch, out_ch=out_channels or image_channels,
              ch_mult=tuple(model_cfg.ch_mult),
              num_res_blocks=model_cfg.num_res_blocks,
              attn_resolutions=tuple(model_cfg.attn_resolutions),
              dropout=model_cfg.dropout,
              resamp_with_conv=model_cfg.resamp_with_conv,
              num_groups=model_cfg.num_groups,
              norm_eps=model_cfg.norm_eps,
              attn_head_dim=model_cfg.attn_head_dim,
              flip_sin_to_cos=model_cfg.flip_sin_to_cos,
              freq_shift=model_cfg.freq_shift,
              downsample_padding=model_cfg.downsample_padding,
              act=model_cfg.act,
              dtype=jnp.dtype(model_cfg.dtype),
              num_classes=int(model_cfg.num_classes),
              conv_backward=model_cfg.conv_backward,
              dropout_rng_impl=model_cfg.dropout_rng_impl,
              upsample_conv=model_cfg.upsample_conv,
              attention_impl=model_cfg.attention_impl)


@functools.lru_cache(maxsize=None)
def eps_fn(model: nn.Module):
  """``apply_fn(params, x_t, t, dropout_rng)`` for :mod:`ddpm_jax.diffusion`.

  Cached per model so that jitted callers see the same static function and
  compile once. ``dropout_rng=None`` runs the network deterministically.
  """

  def apply_fn(params, x_t, t, dropout_rng: Optional[jax.Array] = None):
    if dropout_rng is None:
      return model.apply({"params": params}, x_t, t, train=False)
    return model.apply({"params": params}, x_t, t, train=True,
                       rngs={"dropout": dropout_rng})

  return apply_fn
