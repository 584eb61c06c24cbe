"""The paper's original TensorFlow checkpoints -> the ddpm-jax U-Net.

hojonathanho/diffusion saves its U-Net under the variable scope ``model``
with the names of its ``diffusion_tf/models/unet.py``: ``temb/dense0/W``,
``conv_in/W``, ``down_{i}/block_{j}/{norm1,conv1,temb_proj,norm2,conv2,
nin_shortcut}``, ``down_{i}/attn_{j}/{norm,q,k,v,proj_out}``,
``down_{i}/downsample/conv``, ``mid/{block_1,attn_1,block_2}``,
``up_{i}/...``, ``up_{i}/upsample/conv``, ``norm_out``, ``conv_out``; dense
and conv weights are ``W`` and ``b``, group norms ``gamma`` and ``beta``,
and the EMA copy of each variable is ``<name>/ExponentialMovingAverage``.
Our U-Net uses the same layouts (HWIO convolutions, (in, out) dense
kernels), so the import is a renaming. The checkpoint does not record the
image size, which places the attention layers: the caller gives it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np

from configs import default
from ddpm_jax import paths
from ddpm_jax.interop import ConversionError
from ddpm_jax.interop.diffusers_unet import params_shape
from ddpm_jax.models.unet import unet_from_config

SCOPE = "model"
EMA_SUFFIX = "/ExponentialMovingAverage"
_LEAVES = {"kernel": "W", "bias": "b"}
_NORM_LEAVES = {"scale": "gamma", "bias": "beta"}
_WEIGHT = re.compile(r"/(W|b|gamma|beta)$")


def _tf_module(name: str) -> str:
  """Our top-level module name -> the original's variable scope."""
  m = re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", name)
  if m:
    return f"{m.group(1)}_{m.group(2)}/{m.group(3)}_{m.group(4)}"
  m = re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", name)
  if m:
    return f"{m.group(1)}_{m.group(2)}/{m.group(3)}"
  m = re.fullmatch(r"mid_(block|attn)_(\d)", name)
  if m:
    return f"mid/{m.group(1)}_{m.group(2)}"
  m = re.fullmatch(r"temb_(dense\d)", name)
  if m:
    return f"temb/{m.group(1)}"
  return name


def tf_variable_name(keys: Tuple[str, ...]) -> str:
  """The original's variable name of our parameter at path ``keys``."""
  parts = [SCOPE, _tf_module(keys[0])] + list(keys[1:-1])
  is_norm = (keys[-2] if len(keys) > 1 else "").startswith("norm")
  leaf = (_NORM_LEAVES if is_norm else _LEAVES)[keys[-1]]
  return "/".join(parts + [leaf])


def _open(path: str):
  # TensorFlow (the `tf` extra) loads only when a TF checkpoint is read.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(f"reading the TF checkpoint {path} needs "
                          f"TensorFlow: pip install 'ddpm-jax[tf]'") from None
  prefix = path
  if paths.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise ConversionError(f"{path} holds no TF checkpoint (no 'checkpoint' "
                            f"index file): give the model.ckpt-NNNN prefix")
  if not paths.exists(prefix + ".index"):
    raise ConversionError(f"{prefix}.index not found: give a TF checkpoint "
                          f"prefix such as .../model.ckpt-790000")
  try:
    return tf.train.load_checkpoint(prefix), prefix
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"cannot read TF checkpoint {prefix}: "
                          f"{str(e).splitlines()[0]}") from None


def is_tf_checkpoint(path: str) -> bool:
  """Whether ``path`` is a TF checkpoint prefix or a directory with one."""
  if paths.exists(path + ".index"):
    return True
  return paths.isdir(path) and paths.isfile(
      paths.join(path, "checkpoint"))


def model_config_from_shapes(shapes: Dict[str, Tuple[int, ...]],
                             image_size: int, source: str
                             ) -> Tuple[ml_collections.ConfigDict, int]:
  """Our ``config.model`` (and the image channels) from the original's
  variable shapes."""
  def shape(name):
    if name not in shapes:
      raise ConversionError(f"{source}: no variable {name}; is this a "
                            f"hojonathanho/diffusion U-Net checkpoint?")
    return shapes[name]

  conv_in = shape(f"{SCOPE}/conv_in/W")
  ch, channels = conv_in[3], conv_in[2]
  out_ch = shape(f"{SCOPE}/conv_out/W")[3]
  if out_ch != channels:
    raise ConversionError(f"{source}: the model outputs {out_ch} channels "
                          f"for {channels}-channel images (a learned-variance "
                          f"model), which is not supported yet")
  if any("/conv_shortcut/" in n for n in shapes):
    raise ConversionError(f"{source}: conv_shortcut residual projections are "
                          f"not supported")
  levels = 1 + max(int(m.group(1)) for n in shapes
                   for m in [re.match(rf"{SCOPE}/down_(\d+)/", n)] if m)
  blocks = 1 + max(int(m.group(1)) for n in shapes
                   for m in [re.match(rf"{SCOPE}/down_0/block_(\d+)/", n)] if m)
  mult = []
  for i in range(levels):
    width = shape(f"{SCOPE}/down_{i}/block_0/conv1/W")[3]
    if width % ch:
      raise ConversionError(f"{source}: level {i} width {width} is not a "
                            f"multiple of {ch}")
    mult.append(width // ch)
  attn_levels = [i for i in range(levels)
                 if f"{SCOPE}/down_{i}/attn_0/q/W" in shapes]
  if image_size % 2**(levels - 1):
    raise ConversionError(f"image size {image_size} is not divisible by "
                          f"2**{levels - 1} for this {levels}-level U-Net")
  model = default.get_default_config().model  # the fields set below win
  model.ch = int(ch)
  model.ch_mult = tuple(int(m) for m in mult)
  model.num_res_blocks = int(blocks)
  model.attn_resolutions = tuple(image_size // 2**i for i in attn_levels)
  model.dropout = 0.0
  model.resamp_with_conv = levels == 1 or (
      f"{SCOPE}/down_0/downsample/conv/W" in shapes)
  model.num_groups = 32
  model.norm_eps = 1e-6  # tf.contrib.layers.group_norm's epsilon
  model.attn_head_dim = None
  model.flip_sin_to_cos = False
  model.freq_shift = 1.0
  model.downsample_padding = 0
  model.act = "swish"
  model.dtype = "float32"
  return model, int(channels)


def read_tf_checkpoint(path: str, image_size: int, prefer_ema: bool = True
                       ) -> Tuple[ml_collections.ConfigDict, int, Any, bool]:
  """Reads an original DDPM TF checkpoint.

  ``path`` is a ``model.ckpt-NNNN`` prefix or a directory whose
  ``checkpoint`` file names one. Returns (model config, image channels,
  Flax params, whether the EMA variables were used). EMA variables are used
  when ``prefer_ema`` and the checkpoint has them for every weight.
  """
  reader, prefix = _open(path)
  all_shapes = {k: tuple(v)
                for k, v in reader.get_variable_to_shape_map().items()}
  # The model's weights; not their EMA copies, nor optimizer slots such as
  # .../W/Adam, nor the global step.
  shapes = {k: v for k, v in all_shapes.items()
            if k.startswith(SCOPE + "/") and _WEIGHT.search(k)}
  model_cfg, channels = model_config_from_shapes(shapes, image_size, prefix)
  model = unet_from_config(model_cfg, channels)
  want = params_shape(model, image_size, channels)
  paths = jax.tree_util.tree_flatten_with_path(want)[0]
  names = [tf_variable_name(tuple(p.key for p in path)) for path, _ in paths]
  use_ema = prefer_ema and all(n + EMA_SUFFIX in all_shapes for n in names)

  problems, leaves = [], []
  for (path, leaf), name in zip(paths, names):
    if name not in shapes:
      problems.append(f"{name} missing")
      continue
    if shapes[name] != tuple(leaf.shape):
      problems.append(f"{name} has shape {shapes[name]}, expected "
                      f"{tuple(leaf.shape)}")
      continue
    leaves.append(np.asarray(
        reader.get_tensor(name + EMA_SUFFIX if use_ema else name), np.float32))
  extra = sorted(set(shapes) - set(names))
  problems += [f"{n} unexpected" for n in extra]
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise ConversionError(f"{prefix}: variables do not match the U-Net they "
                          f"describe: {'; '.join(problems[:3])}{more}")
  params = jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(want), leaves)
  return model_cfg, channels, params, use_ema
