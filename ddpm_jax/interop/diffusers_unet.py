"""diffusers ``UNet2DModel`` weights <-> the ddpm-jax U-Net's parameters,
and reading and writing a diffusers model directory (its config.json is
mapped in :mod:`ddpm_jax.interop.diffusers_config`).

A diffusers model directory holds ``config.json`` and
``diffusion_pytorch_model.safetensors`` (PyTorch layout: convolutions
OIHW, linear layers (out, in)). Our parameters are the Flax layout (HWIO,
(in, out)). The name and layout map is derived from our own parameter tree,
so it covers exactly the layers the configured model has.
"""

from __future__ import annotations

import io
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
from safetensors import SafetensorError
from safetensors.numpy import load, load_file, save

from ddpm_jax import paths
from ddpm_jax.interop import ConversionError
from ddpm_jax.interop.diffusers_config import (CONFIG_NAME, UNET2D_DEFAULTS,
                                               diffusers_config_from_model,
                                               model_config_from_diffusers)
from ddpm_jax.models.unet import UNet, unet_from_config

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"

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
  for d in (path, paths.join(path, "unet")):
    if paths.isfile(paths.join(d, CONFIG_NAME)):
      return d
  return None


def _read_json(path: str) -> Dict[str, Any]:
  try:
    return json.loads(paths.read_text(path))
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON ({e.msg} at line "
                          f"{e.lineno})") from None


def refuse_nonfinite(tensors: Dict[str, np.ndarray],
                     source: str) -> Dict[str, np.ndarray]:
  """``tensors`` (name: array, as read from ``source``), unless one holds
  a NaN or an infinity: then a one-line ConversionError naming them."""
  bad = sorted(k for k, v in tensors.items() if not np.all(np.isfinite(v)))
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise ConversionError(
        f"{source}: {', '.join(bad[:3])}{more} hold NaN or infinite values: "
        f"the weights are damaged; download or export them again")
  return tensors


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def read_state_dict(model_dir: str) -> Dict[str, np.ndarray]:
  """The tensors of a diffusers model directory, as float32 NumPy arrays.

  Reads ``diffusion_pytorch_model.safetensors``. A directory with only the
  pickled ``.bin`` is read with ``torch.load(weights_only=True)`` when
  torch is installed, and refused otherwise: nothing is ever unpickled.
  """
  st_path = paths.join(model_dir, WEIGHTS_NAME)
  bin_path = paths.join(model_dir, PICKLE_WEIGHTS_NAME)
  if paths.isfile(st_path):
    try:
      state = (load(paths.read_bytes(st_path)) if paths.is_url(st_path)
               else load_file(st_path))
    except SafetensorError as e:
      raise ConversionError(
          f"{st_path} is not a valid safetensors file "
          f"({_first_line(e)}): download it again") from None
    except TypeError as e:  # a dtype NumPy lacks
      raise ConversionError(
          f"{st_path} holds tensors NumPy cannot read ({_first_line(e)}): "
          f"save it again as float32 or float16") from None
    except (OSError, ValueError) as e:
      raise ConversionError(f"cannot read {st_path} ({_first_line(e)})"
                            ) from None
    return refuse_nonfinite(
        {k: np.asarray(v, np.float32) for k, v in state.items()}, st_path)
  if paths.isfile(bin_path):
    try:
      # torch is optional (the test extra): only for a pickled .bin.
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConversionError(
          f"{model_dir} has only the pickled {PICKLE_WEIGHTS_NAME}, which "
          f"ddpm-jax does not unpickle: convert it to {WEIGHTS_NAME} (e.g. "
          f"safetensors.torch.save_file on a machine with torch) or install "
          f"torch") from None
    try:
      state = torch.load(io.BytesIO(paths.read_bytes(bin_path)),
                         map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      # torch's own message suggests weights_only=False: never done here.
      raise ConversionError(
          f"{bin_path} is not a plain tensor file: torch.load("
          f"weights_only=True) refused it ({type(e).__name__}: it holds "
          f"objects other than tensors, or is damaged), and ddpm-jax never "
          f"unpickles anything else; download it again, or convert it to "
          f"{WEIGHTS_NAME} where you trust its source") from None
    return refuse_nonfinite(
        {k: v.detach().float().numpy() for k, v in state.items()}, bin_path)
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
  cfg = _read_json(paths.join(model_dir, CONFIG_NAME))
  model_cfg, size, channels = model_config_from_diffusers(cfg)
  state = read_state_dict(model_dir)
  # Each ResNet layer has tensors of its own: a layers_per_block the file
  # cannot hold is refused before its names are listed (a hostile
  # config.json's millions of layers would take hours to list).
  layers = int(model_cfg.num_res_blocks) * len(model_cfg.ch_mult)
  if layers > len(state):
    raise ConversionError(
        f"{paths.join(model_dir, CONFIG_NAME)}: layers_per_block="
        f"{model_cfg.num_res_blocks} over {len(model_cfg.ch_mult)} levels "
        f"means at least {layers} tensors, and "
        f"{paths.join(model_dir, WEIGHTS_NAME)} has {len(state)}: the config "
        f"does not describe these weights")
  params = params_from_state_dict(state, model_cfg, size, channels,
                                  source=paths.join(model_dir, WEIGHTS_NAME),
                                  out_channels=int(
                                      {**UNET2D_DEFAULTS, **cfg}[
                                          "out_channels"]))
  return model_cfg, size, channels, params


def write_model_dir(out_dir: str, params: Any,
                    model_cfg: ml_collections.ConfigDict, image_size: int,
                    channels: int,
                    scheduler_config: Optional[Dict[str, Any]] = None) -> None:
  """Writes ``config.json`` + safetensors (+ ``scheduler_config.json``) that
  ``UNet2DModel.from_pretrained`` / ``DDPMScheduler.from_pretrained`` load.

  Refuses an existing non-empty ``out_dir``. A local directory is written
  in a temporary one first, so an error leaves nothing behind; at a URL
  the files are objects written one by one, ``config.json`` last (a
  directory without it is not taken for a model).
  """
  if paths.exists(out_dir) and (not paths.isdir(out_dir)
                                or paths.listdir(out_dir)):
    raise ConversionError(f"{out_dir} already exists and is not empty: "
                          f"choose a new output directory")
  out_channels = int(np.shape(params["conv_out"]["kernel"])[-1])
  config = diffusers_config_from_model(model_cfg, image_size, channels,
                                       out_channels)
  files = {WEIGHTS_NAME: save(state_dict_from_params(params, model_cfg),
                              metadata={"format": "pt"})}
  if scheduler_config is not None:
    files["scheduler_config.json"] = _json_bytes(scheduler_config)
  files[CONFIG_NAME] = _json_bytes(config)
  if paths.is_url(out_dir):
    for name, data in files.items():
      paths.write_bytes(paths.join(out_dir, name), data)
    return
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".ddpm_jax_export_", dir=parent)
  try:
    for name, data in files.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty, checked above
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _json_bytes(obj: Dict[str, Any]) -> bytes:
  return json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
