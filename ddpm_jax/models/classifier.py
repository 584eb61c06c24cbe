"""A noise-aware classifier p_phi(y | x_t, t) for classifier guidance: the
U-Net's downsampling half (same blocks, same timestep embedding) and its
middle, then GroupNorm-swish, global average pooling and a linear head
(as in Dhariwal & Nichol 2021's guidance classifier, without its
attention pooling)."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.unet import (AttnBlock, Downsample, ResnetBlock,
                                  _norm, default_init, timestep_embedding)


class NoisyClassifier(nn.Module):
  """Logits [B, num_classes] of x_t (NHWC in [-1, 1]-ish) at timestep t."""
  num_classes: int
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  num_groups: int = 32
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    block = functools.partial(ResnetBlock, dropout=self.dropout,
                              num_groups=self.num_groups,
                              norm_eps=self.norm_eps)
    temb = timestep_embedding(t, self.ch)
    temb = nn.Dense(self.ch * 4, kernel_init=default_init,
                    name="temb_dense0")(temb)
    temb = nn.Dense(self.ch * 4, kernel_init=default_init,
                    name="temb_dense1")(nn.swish(temb))
    h = nn.Conv(self.ch, (3, 3), padding="SAME", kernel_init=default_init,
                name="conv_in")(x)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(self.ch * mult, name=f"down_{i}_block_{j}")(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, self.norm_eps,
                        name=f"down_{i}_attn_{j}")(h)
      if i != len(self.ch_mult) - 1:
        h = Downsample(True, 0, name=f"down_{i}_downsample")(h)
    h = block(h.shape[-1], name="mid_block")(h, temb, train)
    h = nn.swish(_norm(self.num_groups, self.norm_eps, "norm_out")(h))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=default_init,
                    name="head")(h).astype(jnp.float32)


def classifier_from_config(cfg) -> NoisyClassifier:
  """A :class:`NoisyClassifier` from a ``config.classifier`` ConfigDict."""
  return NoisyClassifier(num_classes=int(cfg.num_classes), ch=int(cfg.ch),
                         ch_mult=tuple(cfg.ch_mult),
                         num_res_blocks=int(cfg.num_res_blocks),
                         attn_resolutions=tuple(cfg.attn_resolutions),
                         dropout=float(cfg.dropout),
                         num_groups=int(cfg.num_groups))


def log_prob_fn(classifier: NoisyClassifier):
  """``fn(params, x_t, t, labels, dropout_rng=None) -> [B]`` log
  p_phi(labels | x_t, t)."""

  def fn(params, x_t, t, labels, dropout_rng: Optional[jax.Array] = None):
    kwargs: Any = ({} if dropout_rng is None else
                   {"rngs": {"dropout": dropout_rng}})
    logits = classifier.apply({"params": params}, x_t, t,
                              train=dropout_rng is not None, **kwargs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

  return fn


def init_classifier(classifier: NoisyClassifier, image_size: int,
                    channels: int, seed: int) -> Any:
  """The classifier's initial parameters, from ``PRNGKey(seed)``."""
  return classifier.init(jax.random.PRNGKey(seed),
                         jnp.zeros((1, image_size, image_size, channels)),
                         jnp.zeros((1,), jnp.int32))["params"]
