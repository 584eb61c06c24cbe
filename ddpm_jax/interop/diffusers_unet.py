"""diffusers ``UNet2DModel`` <-> the ddpm-jax U-Net.

A diffusers model directory holds ``config.json`` and
``diffusion_pytorch_model.safetensors`` (PyTorch layout: convolutions
OIHW, linear layers (out, in)). Our parameters are the Flax layout (HWIO,
(in, out)). The name and layout map is derived from our own parameter tree,
so it covers exactly the layers the configured model has.

The google/ddpm-* models are ``UNet2DModel`` with ``flip_sin_to_cos=False``,
``freq_shift=1``, ``norm_eps=1e-6``, ``downsample_padding=0`` and one
attention head; ``UNet2DModel``'s own defaults differ, and the converter maps
whichever values a config has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import default
from ddpm_jax.interop import ConversionError
from ddpm_jax.models.unet import ACTIVATIONS, UNet, unet_from_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"

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


def model_config_from_diffusers(cfg: Dict[str, Any]
                                ) -> Tuple[ml_collections.ConfigDict, int, int]:
  """Our ``config.model`` from a ``UNet2DModel`` config dict.

  Returns (model config, image size, image channels). Raises
  :class:`ConversionError` naming the first option we cannot honour.
  """
  cls = cfg.get("_class_name", "UNet2DModel")
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

  boc = [int(c) for c in cfg.get("block_out_channels", (224, 448, 672, 896))]
  down = list(cfg.get("down_block_types", ("DownBlock2D", "AttnDownBlock2D",
                                           "AttnDownBlock2D",
                                           "AttnDownBlock2D")))
  up = list(cfg.get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D",
                                       "AttnUpBlock2D", "UpBlock2D")))
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
  temb_dim = cfg.get("time_embedding_dim")
  if temb_dim is not None and int(temb_dim) != 4 * ch:
    raise _refuse("time_embedding_dim", temb_dim, f"it must be 4 * {ch}")

  size = cfg.get("sample_size")
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise _refuse("sample_size", size, "only square images")
    size = size[0]
  if size is None:
    raise ConversionError("config.json has no sample_size: set it to the "
                          "image size the model was trained at")
  size = int(size)
  if size % (2**(levels - 1)):
    raise _refuse("sample_size", size,
                  f"it must be divisible by 2**{levels - 1}")

  in_ch = int(cfg.get("in_channels", 3))
  out_ch = int(cfg.get("out_channels", 3))
  if out_ch not in (in_ch, 2 * in_ch):
    raise _refuse("out_channels", out_ch,
                  f"it must equal in_channels ({in_ch}), or twice it for a "
                  f"learned variance (variance_type 'learned_range')")

  groups = cfg.get("norm_num_groups", 32)
  if groups is None:
    raise _refuse("norm_num_groups", None, "give the group count")
  attn_groups = cfg.get("attn_norm_num_groups")
  if attn_groups is not None and int(attn_groups) != int(groups):
    raise _refuse("attn_norm_num_groups", attn_groups,
                  f"attention must normalise with norm_num_groups={groups}")
  for c in boc:
    if c % int(groups):
      raise _refuse("norm_num_groups", groups,
                    f"it must divide every block width {boc}")

  act = cfg.get("act_fn", "silu")
  if act not in ACTIVATIONS:
    raise _refuse("act_fn", act, f"choose from {sorted(ACTIVATIONS)}")

  head_dim = cfg.get("attention_head_dim", 8)
  if head_dim is not None:
    head_dim = int(head_dim)
    for c in [boc[i] for i in attn_levels] + [boc[-1]]:
      if c % head_dim:
        raise _refuse("attention_head_dim", head_dim,
                      f"it must divide the attention width {c}")

  pad = int(cfg.get("downsample_padding", 1))
  if pad not in (0, 1):
    raise _refuse("downsample_padding", pad, "choose 0 or 1")

  model = default.get_default_config().model  # the fields set below win
  model.ch = ch
  model.ch_mult = tuple(c // ch for c in boc)
  model.num_res_blocks = int(cfg.get("layers_per_block", 2))
  model.attn_resolutions = tuple(size // 2**i for i in attn_levels)
  model.dropout = float(cfg.get("dropout", 0.0))
  model.resamp_with_conv = True
  model.num_groups = int(groups)
  model.norm_eps = float(cfg.get("norm_eps", 1e-5))
  model.attn_head_dim = head_dim
  model.flip_sin_to_cos = bool(cfg.get("flip_sin_to_cos", True))
  model.freq_shift = float(cfg.get("freq_shift", 0))
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


# --- parameter names and layouts -------------------------------------------

_RESNET_LAYERS = {"norm1": "norm1", "conv1": "conv1",
                  "temb_proj": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN_LAYERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
                "proj_out": "to_out.0"}
# Names of the attention layers in checkpoints saved before diffusers 0.14
# (the google/ddpm-* files on the Hub).
_OLD_ATTN_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value",
                   "to_out.0": "proj_attn"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _module_name(name: str, levels: int) -> Tuple[str, Dict[str, str]]:
  """Our top-level module name -> (diffusers prefix, its inner-layer map)."""
  fixed = {"temb_dense0": "time_embedding.linear_1",
           "temb_dense1": "time_embedding.linear_2",
           "conv_in": "conv_in", "norm_out": "conv_norm_out",
           "conv_out": "conv_out"}
  if name in fixed:
    return fixed[name], {}
  m = re.fullmatch(r"mid_(block|attn)_(\d)", name)
  if m:
    kind, j = m.group(1), int(m.group(2)) - 1
    if kind == "block":
      return f"mid_block.resnets.{j}", _RESNET_LAYERS
    return f"mid_block.attentions.{j}", _ATTN_LAYERS
  m = re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", name)
  if m:
    side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    k = i if side == "down" else levels - 1 - i
    if kind == "block":
      return f"{side}_blocks.{k}.resnets.{j}", _RESNET_LAYERS
    return f"{side}_blocks.{k}.attentions.{j}", _ATTN_LAYERS
  m = re.fullmatch(r"down_(\d+)_downsample", name)
  if m:
    return f"down_blocks.{m.group(1)}.downsamplers.0", {"conv": "conv"}
  m = re.fullmatch(r"up_(\d+)_upsample", name)
  if m:
    return (f"up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0",
            {"conv": "conv"})
  raise ConversionError(f"no diffusers name for parameter module {name!r}")


def param_name_map(params_shape: Any, levels: int
                   ) -> List[Tuple[Tuple[str, ...], str, str]]:
  """For every leaf of our parameter tree: (Flax path, diffusers name,
  layout), layout one of 'conv' (HWIO <-> OIHW), 'dense' ((in, out) <->
  (out, in)), 'conv1x1' ((in, out) <-> (out, in, 1, 1)) or 'same'."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params_shape)[0]:
    keys = tuple(p.key for p in path)
    prefix, inner = _module_name(keys[0], levels)
    parts = [prefix]
    if len(keys) == 3:
      parts.append(inner[keys[1]])
    elif len(keys) != 2:
      raise ConversionError(f"unexpected parameter path {'/'.join(keys)}")
    parts.append(_LEAVES[keys[-1]])
    if keys[-1] != "kernel":
      layout = "same"
    elif len(leaf.shape) == 4:
      layout = "conv"
    elif len(keys) == 3 and keys[1] == "nin_shortcut":
      layout = "conv1x1"
    else:
      layout = "dense"
    out.append((keys, ".".join(parts), layout))
  return out


def to_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
  """One of our arrays in the layout diffusers stores it in."""
  x = np.asarray(x)
  if layout == "conv":
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
  if layout == "dense":
    return np.ascontiguousarray(x.T)
  if layout == "conv1x1":
    return np.ascontiguousarray(x.T[:, :, None, None])
  return np.ascontiguousarray(x)


def from_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
  """A diffusers array in our layout (inverse of :func:`to_torch_layout`)."""
  x = np.asarray(x)
  if layout == "conv":
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
  if layout == "dense":
    return np.ascontiguousarray(x.T)
  if layout == "conv1x1":
    if x.ndim != 4 or x.shape[2:] != (1, 1):
      return x  # reported as a shape mismatch by the caller
    return np.ascontiguousarray(x[:, :, 0, 0].T)
  return x


def _expected_torch_shape(shape: Tuple[int, ...], layout: str
                          ) -> Tuple[int, ...]:
  if layout == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == "dense":
    return (shape[1], shape[0])
  if layout == "conv1x1":
    return (shape[1], shape[0], 1, 1)
  return tuple(shape)


def params_shape(model: UNet, image_size: int, channels: int) -> Any:
  """Our parameter tree's shapes and dtypes, without computing any values."""
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, t))["params"]


def _find(state: Dict[str, np.ndarray], name: str) -> Optional[str]:
  if name in state:
    return name
  for new, old in _OLD_ATTN_NAMES.items():
    if f".{new}." in name:
      legacy = name.replace(f".{new}.", f".{old}.")
      if legacy in state:
        return legacy
  return None


def _describe(problems: List[str], source: str) -> str:
  shown = "; ".join(problems[:3])
  more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
  return f"{source}: tensors do not match config.json: {shown}{more}"


def params_from_state_dict(state: Dict[str, np.ndarray],
                           model_cfg: ml_collections.ConfigDict,
                           image_size: int, channels: int,
                           source: str = "state dict",
                           out_channels: Optional[int] = None
                           ) -> Dict[str, Any]:
  """Our Flax params from a diffusers state dict (name -> NumPy array).

  Every tensor must be present with its shape and none may be left over;
  otherwise the error lists the first mismatches. ``out_channels``
  defaults to ``channels`` (2x for a learned variance).
  """
  model = unet_from_config(model_cfg, channels, out_channels)
  shapes = params_shape(model, image_size, channels)
  problems, used, leaves = [], set(), {}
  for keys, name, layout in param_name_map(shapes, len(model_cfg.ch_mult)):
    leaf = shapes
    for k in keys:
      leaf = leaf[k]
    found = _find(state, name)
    if found is None:
      problems.append(f"{name} missing")
      continue
    used.add(found)
    arr = np.asarray(state[found])
    want = _expected_torch_shape(leaf.shape, layout)
    if tuple(arr.shape) != want:
      problems.append(f"{found} has shape {tuple(arr.shape)}, expected "
                      f"{want}")
      continue
    leaves[keys] = from_torch_layout(arr, layout).astype(np.float32)
  for name in sorted(set(state) - used):
    problems.append(f"{name} unexpected")
  if problems:
    raise ConversionError(_describe(problems, source))
  params: Dict[str, Any] = {}
  for keys, value in leaves.items():
    node = params
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return params


def state_dict_from_params(params: Any, model_cfg: ml_collections.ConfigDict
                           ) -> Dict[str, np.ndarray]:
  """The diffusers state dict (current attention names) of our params."""
  out = {}
  for keys, name, layout in param_name_map(params, len(model_cfg.ch_mult)):
    leaf = params
    for k in keys:
      leaf = leaf[k]
    out[name] = to_torch_layout(np.asarray(leaf, np.float32), layout)
  return out


# --- files -----------------------------------------------------------------


def find_model_dir(path: str) -> Optional[str]:
  """``path`` or its ``unet/`` subfolder (the pipeline layout), whichever
  holds a UNet config.json; None if neither does."""
  for d in (path, os.path.join(path, "unet")):
    if os.path.isfile(os.path.join(d, CONFIG_NAME)):
      return d
  return None


def _read_json(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON ({e.msg} at line "
                          f"{e.lineno})") from None


def read_state_dict(model_dir: str) -> Dict[str, np.ndarray]:
  """The tensors of a diffusers model directory, as float32 NumPy arrays.

  Reads ``diffusion_pytorch_model.safetensors``. A directory with only the
  pickled ``.bin`` is read with ``torch.load(weights_only=True)`` when
  torch is installed, and refused otherwise: nothing is ever unpickled.
  """
  st_path = os.path.join(model_dir, WEIGHTS_NAME)
  bin_path = os.path.join(model_dir, PICKLE_WEIGHTS_NAME)
  if os.path.isfile(st_path):
    from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      state = load_file(st_path)
    except (SafetensorError, OSError, TypeError, ValueError) as e:
      raise ConversionError(
          f"cannot read {st_path}: {str(e).splitlines()[0]} (a float16/"
          f"bfloat16 or truncated file? save it again as float32)") from None
    return {k: np.asarray(v, np.float32) for k, v in state.items()}
  if os.path.isfile(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConversionError(
          f"{model_dir} has only the pickled {PICKLE_WEIGHTS_NAME}, which "
          f"ddpm-jax does not unpickle: convert it to {WEIGHTS_NAME} (e.g. "
          f"safetensors.torch.save_file on a machine with torch) or install "
          f"torch") from None
    try:
      state = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(
          f"cannot read {bin_path} with torch.load(weights_only=True): "
          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
          f"convert it to {WEIGHTS_NAME}") from None
    return {k: v.detach().float().numpy() for k, v in state.items()}
  raise ConversionError(f"{model_dir} has no {WEIGHTS_NAME}: download the "
                        f"model's weights file into it")


def read_model_dir(path: str) -> Tuple[ml_collections.ConfigDict, int, int,
                                       Dict[str, Any]]:
  """Reads a diffusers ``UNet2DModel`` directory.

  Returns (our model config, image size, channels, Flax params); a
  learned-variance model's params have 2x channels out (``conv_out``).
  """
  model_dir = find_model_dir(path)
  if model_dir is None:
    raise ConversionError(f"{path} has no {CONFIG_NAME} (nor unet/"
                          f"{CONFIG_NAME}): give a diffusers model directory")
  cfg = _read_json(os.path.join(model_dir, CONFIG_NAME))
  model_cfg, size, channels = model_config_from_diffusers(cfg)
  state = read_state_dict(model_dir)
  params = params_from_state_dict(state, model_cfg, size, channels,
                                  source=os.path.join(model_dir, WEIGHTS_NAME),
                                  out_channels=int(cfg.get("out_channels",
                                                           channels)))
  return model_cfg, size, channels, params


def write_model_dir(out_dir: str, params: Any,
                    model_cfg: ml_collections.ConfigDict, image_size: int,
                    channels: int,
                    scheduler_config: Optional[Dict[str, Any]] = None) -> None:
  """Writes ``config.json`` + safetensors (+ ``scheduler_config.json``) that
  ``UNet2DModel.from_pretrained`` / ``DDPMScheduler.from_pretrained`` load.

  Refuses an existing non-empty ``out_dir``; the files are written to a
  temporary directory first, so an error leaves nothing behind.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir)
                                  or os.listdir(out_dir)):
    raise ConversionError(f"{out_dir} already exists and is not empty: "
                          f"choose a new output directory")
  out_channels = int(np.shape(params["conv_out"]["kernel"])[-1])
  config = diffusers_config_from_model(model_cfg, image_size, channels,
                                       out_channels)
  state = state_dict_from_params(params, model_cfg)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".ddpm_jax_export_", dir=parent)
  try:
    with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    save_file(state, os.path.join(tmp, WEIGHTS_NAME),
              metadata={"format": "pt"})
    if scheduler_config is not None:
      with open(os.path.join(tmp, "scheduler_config.json"), "w") as f:
        json.dump(scheduler_config, f, indent=2, sort_keys=True)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty, checked above
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
