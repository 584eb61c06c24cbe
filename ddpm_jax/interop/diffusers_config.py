"""diffusers ``UNet2DModel`` config.json <-> our ``config.model``.

:func:`model_config_from_diffusers` maps every option it can honour and
refuses, naming it, any it cannot; :func:`diffusers_config_from_model`
writes the config of an export. The weights are mapped in
:mod:`ddpm_jax.interop.diffusers_unet`.

The google/ddpm-* models are ``UNet2DModel`` with ``flip_sin_to_cos=False``,
``freq_shift=1``, ``norm_eps=1e-6``, ``downsample_padding=0`` and one
attention head; ``UNet2DModel``'s own defaults differ, and the converter maps
whichever values a config has.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import ml_collections

from configs import default
from ddpm_jax.interop import ConversionError
from ddpm_jax.models.unet import ACTIVATIONS

CONFIG_NAME = "config.json"

_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}

# UNet2DModel options that must have one value for a DDPM U-Net: value
# required (a key absent from a config takes diffusers' default, which is
# the required value for all of these).
_FIXED_OPTIONS = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
# Options mapped onto ours, and options without effect on this architecture.
_MAPPED_OPTIONS = {
    "sample_size", "in_channels", "out_channels", "time_embedding_dim",
    "freq_shift", "flip_sin_to_cos", "down_block_types", "up_block_types",
    "block_out_channels", "layers_per_block", "downsample_padding", "dropout",
    "act_fn", "attention_head_dim", "norm_num_groups", "attn_norm_num_groups",
    "norm_eps",
}
_IGNORED_OPTIONS = {"num_train_timesteps"}  # used only by a learned temb


def _refuse(field: str, value: Any, why: str) -> ConversionError:
  return ConversionError(f"UNet2DModel option {field}={value!r} is not "
                         f"supported: {why}")


# UNet2DModel's defaults for the options read here, used where config.json
# omits one (as UNet2DModel.from_pretrained does).
UNET2D_DEFAULTS = {
    "_class_name": "UNet2DModel",
    "block_out_channels": (224, 448, 672, 896),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                         "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                       "UpBlock2D"),
    "time_embedding_dim": None,
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "downsample_padding": 1,
    "layers_per_block": 2,
    "dropout": 0.0,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}


# No device holds this much for one image: a sample_size that needs more is
# a damaged or hostile config.json, refused before any array is made.
MAX_ACTIVATION_BYTES = 2**40


def activation_bytes(size: int, ch: int, layers_per_block: int) -> int:
  """A lower bound on one image's float32 activations in the U-Net: the
  feature maps of its first level (each ResNet layer's output, kept for
  the skip connections, and as many on the way up)."""
  return 4 * size * size * ch * 2 * (max(layers_per_block, 0) + 1)


def model_config_from_diffusers(cfg: Dict[str, Any]
                                ) -> Tuple[ml_collections.ConfigDict, int, int]:
  """Our ``config.model`` from a ``UNet2DModel`` config dict.

  Returns (model config, image size, image channels). Raises
  :class:`ConversionError` naming the first option we cannot honour.
  """
  # What UNet2DModel assumes for a key that config.json lacks.
  options = {**UNET2D_DEFAULTS, **cfg}
  cls = options["_class_name"]
  if cls != "UNet2DModel":
    raise ConversionError(f"_class_name is {cls!r}; only UNet2DModel "
                          f"converts to the ddpm-jax U-Net")
  for key, value in cfg.items():
    if key.startswith("_"):
      continue
    if key in _FIXED_OPTIONS:
      if value != _FIXED_OPTIONS[key]:
        raise _refuse(key, value,
                      f"the DDPM U-Net needs {_FIXED_OPTIONS[key]!r}")
    elif key not in _MAPPED_OPTIONS and key not in _IGNORED_OPTIONS:
      if value is not None:
        raise _refuse(key, value, "unknown to this converter")

  boc = [int(c) for c in options["block_out_channels"]]
  down = list(options["down_block_types"])
  up = list(options["up_block_types"])
  levels = len(boc)
  if len(down) != levels or len(up) != levels:
    raise ConversionError(
        f"block_out_channels has {levels} entries but down_block_types has "
        f"{len(down)} and up_block_types {len(up)}")
  for name, kinds, table in (("down_block_types", down, _DOWN_BLOCKS),
                             ("up_block_types", up, _UP_BLOCKS)):
    for kind in kinds:
      if kind not in table:
        raise _refuse(name, kind, f"choose from {sorted(table)}")
  attn_levels = [i for i, kind in enumerate(down) if _DOWN_BLOCKS[kind]]
  up_attn_levels = [levels - 1 - k for k, kind in enumerate(up)
                    if _UP_BLOCKS[kind]]
  if sorted(up_attn_levels) != attn_levels:
    raise _refuse("up_block_types", up,
                  "attention must sit at the same resolutions going down "
                  f"and up (down_block_types is {down})")

  ch = boc[0]
  if any(c % ch for c in boc):
    raise _refuse("block_out_channels", boc,
                  "every entry must be a multiple of the first")
  temb_dim = options["time_embedding_dim"]
  if temb_dim is not None and int(temb_dim) != 4 * ch:
    raise _refuse("time_embedding_dim", temb_dim, f"it must be 4 * {ch}")

  size = options["sample_size"]
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise _refuse("sample_size", size, "only square images")
    size = size[0]
  if size is None:
    raise ConversionError("config.json has no sample_size: set it to the "
                          "image size the model was trained at")
  size = int(size)
  need = activation_bytes(size, boc[0], int(options["layers_per_block"]))
  if size < 1 or need > MAX_ACTIVATION_BYTES:
    raise _refuse("sample_size", size,
                  f"one image of that size would need at least "
                  f"{need / 2**40:.3g} TiB of activations; check config.json")
  if size % (2**(levels - 1)):
    raise _refuse("sample_size", size,
                  f"it must be divisible by 2**{levels - 1}")

  in_ch = int(options["in_channels"])
  out_ch = int(options["out_channels"])
  if out_ch not in (in_ch, 2 * in_ch):
    raise _refuse("out_channels", out_ch,
                  f"it must equal in_channels ({in_ch}), or twice it for a "
                  f"learned variance (variance_type 'learned_range')")

  groups = options["norm_num_groups"]
  if groups is None:
    raise _refuse("norm_num_groups", None, "give the group count")
  attn_groups = options["attn_norm_num_groups"]
  if attn_groups is not None and int(attn_groups) != int(groups):
    raise _refuse("attn_norm_num_groups", attn_groups,
                  f"attention must normalise with norm_num_groups={groups}")
  for c in boc:
    if c % int(groups):
      raise _refuse("norm_num_groups", groups,
                    f"it must divide every block width {boc}")

  act = options["act_fn"]
  if act not in ACTIVATIONS:
    raise _refuse("act_fn", act, f"choose from {sorted(ACTIVATIONS)}")

  head_dim = options["attention_head_dim"]
  if head_dim is not None:
    head_dim = int(head_dim)
    for c in [boc[i] for i in attn_levels] + [boc[-1]]:
      if c % head_dim:
        raise _refuse("attention_head_dim", head_dim,
                      f"it must divide the attention width {c}")

  pad = int(options["downsample_padding"])
  if pad not in (0, 1):
    raise _refuse("downsample_padding", pad, "choose 0 or 1")

  model = default.get_default_config().model  # the fields set below win
  model.ch = ch
  model.ch_mult = tuple(c // ch for c in boc)
  model.num_res_blocks = int(options["layers_per_block"])
  model.attn_resolutions = tuple(size // 2**i for i in attn_levels)
  model.dropout = float(options["dropout"])
  model.resamp_with_conv = True
  model.num_groups = int(groups)
  model.norm_eps = float(options["norm_eps"])
  model.attn_head_dim = head_dim
  model.flip_sin_to_cos = bool(options["flip_sin_to_cos"])
  model.freq_shift = float(options["freq_shift"])
  model.downsample_padding = pad
  model.act = act
  model.dtype = "float32"
  return model, size, in_ch


def diffusers_config_from_model(model_cfg: ml_collections.ConfigDict,
                                image_size: int, channels: int,
                                out_channels: Optional[int] = None
                                ) -> Dict[str, Any]:
  """The ``UNet2DModel`` config dict of our ``config.model``
  (``out_channels`` defaults to ``channels``)."""
  if not model_cfg.resamp_with_conv:
    raise ConversionError("model.resamp_with_conv=False (average-pool "
                          "downsampling) has no UNet2DModel equivalent")
  ch = int(model_cfg.ch)
  mult = [int(m) for m in model_cfg.ch_mult]
  levels = len(mult)
  attn_res = {int(r) for r in model_cfg.attn_resolutions}
  has_attn = [image_size // 2**i in attn_res for i in range(levels)]
  freq_shift = float(model_cfg.freq_shift)
  head_dim = model_cfg.attn_head_dim
  return {
      "_class_name": "UNet2DModel",
      "act_fn": model_cfg.act,
      "add_attention": True,
      "attention_head_dim": None if head_dim is None else int(head_dim),
      "attn_norm_num_groups": None,
      "block_out_channels": [ch * m for m in mult],
      "center_input_sample": False,
      "class_embed_type": None,
      "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D"
                           for a in has_attn],
      "downsample_padding": int(model_cfg.downsample_padding),
      "downsample_type": "conv",
      "dropout": float(model_cfg.dropout),
      "flip_sin_to_cos": bool(model_cfg.flip_sin_to_cos),
      "freq_shift": int(freq_shift) if freq_shift.is_integer() else freq_shift,
      "in_channels": int(channels),
      "layers_per_block": int(model_cfg.num_res_blocks),
      "mid_block_scale_factor": 1,
      "mid_block_type": "UNetMidBlock2D",
      "norm_eps": float(model_cfg.norm_eps),
      "norm_num_groups": int(model_cfg.num_groups),
      "num_class_embeds": None,
      "out_channels": int(out_channels or channels),
      "resnet_time_scale_shift": "default",
      "sample_size": int(image_size),
      "time_embedding_type": "positional",
      "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D"
                         for a in reversed(has_attn)],
      "upsample_type": "conv",
  }
