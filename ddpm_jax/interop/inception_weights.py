"""Weights of the FID Inception (:mod:`ddpm_jax.models.inception`) from a
local file; nothing is downloaded at run time.

The weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the
TF graph's weights as a PyTorch state dict), downloaded once by the user:

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

Convert it once to safetensors (needs torch; read with
``torch.load(weights_only=True)``, nothing unpickled):

    python -m ddpm_jax.interop.inception_weights --pth pt_inception-2015-12-05-6726825d.pth

which writes :func:`default_path` (``$DDPM_JAX_INCEPTION`` or
``~/.cache/ddpm_jax/pt_inception-2015-12-05.safetensors``) unless ``--out``
says otherwise. Tensor names are kept as in the state dict.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, Dict

import jax
import numpy as np
from safetensors.numpy import load, load_file, save

from ddpm_jax import paths
from ddpm_jax.models.inception import FIDInception

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
               "fid_weights/pt_inception-2015-12-05-6726825d.pth")
DEFAULT_NAME = "pt_inception-2015-12-05.safetensors"

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean",
       "running_var": "var"}


class WeightsError(ValueError):
  """A weights file that does not hold the FID Inception (one line)."""


def default_path() -> str:
  """Where the converted weights are looked for by default."""
  return os.environ.get("DDPM_JAX_INCEPTION") or os.path.join(
      os.path.expanduser("~"), ".cache", "ddpm_jax", DEFAULT_NAME)


def _missing(path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"FID Inception weights not found at {path}: download {WEIGHTS_URL} "
      f"once and run python -m ddpm_jax.interop.inception_weights --pth "
      f"<that file> (writes {default_path()}; or set DDPM_JAX_INCEPTION)")


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The name -> array dict of a ``.safetensors`` file, or of a PyTorch
  state dict (``.pth``/``.pt``, ``torch.load(weights_only=True)``)."""
  if not paths.exists(path):
    raise _missing(path)
  if path.endswith(".safetensors"):
    try:
      return dict(load(paths.read_bytes(path)) if paths.is_url(path)
                  else load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(f"{path} is not a readable safetensors file ({e}): "
                         f"convert the .pth again") from None
  try:
    # torch is optional (the test extra): only to read pytorch-fid's .pth.
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError(f"{path} is a PyTorch file and torch is not "
                       f"installed: convert it to safetensors on a machine "
                       f"with torch (python -m "
                       f"ddpm_jax.interop.inception_weights --pth {path})"
                       ) from None
  try:
    state = torch.load(io.BytesIO(paths.read_bytes(path)),
                       map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{path} is not a plain PyTorch state dict "
                       f"({type(e).__name__}): use pytorch-fid's "
                       f"{WEIGHTS_URL.rsplit('/', 1)[-1]}") from None
  if not isinstance(state, dict):
    raise WeightsError(f"{path} holds a {type(state).__name__}, not a state "
                       f"dict")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _param_path(name: str):
  parts = name.split(".")
  if parts[-1] == "num_batches_tracked":
    return None
  if parts[0] == "fc":
    return ("fc", {"weight": "kernel", "bias": "bias"}[parts[1]])
  if parts[-2] == "conv" and parts[-1] == "weight":
    return tuple(parts[:-1]) + ("kernel",)
  if parts[-2] == "bn" and parts[-1] in _BN:
    return tuple(parts[:-1]) + (_BN[parts[-1]],)
  return ()


def params_from_state_dict(state: Dict[str, np.ndarray]) -> Any:
  """Our parameter tree from pytorch-fid's state dict names and layouts
  (conv OIHW -> HWIO, fc [out, in] -> [in, out]); every parameter of
  :class:`~ddpm_jax.models.inception.FIDInception` must be present with
  its shape."""
  template = jax.eval_shape(lambda: FIDInception(resize=False).init(
      jax.random.PRNGKey(0), np.zeros((1, 75, 75, 3), np.float32)))["params"]
  params: Dict[str, Any] = {}
  for name, value in state.items():
    path = _param_path(name)
    if path is None:
      continue
    if not path:
      raise WeightsError(f"unexpected tensor {name!r}: this is not the FID "
                         f"Inception's state dict ({WEIGHTS_URL})")
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      value = value.T if path[0] == "fc" else value.transpose(2, 3, 1, 0)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  flat_want = {"/".join(k.key for k in p): leaf.shape for p, leaf in
               jax.tree_util.tree_flatten_with_path(template)[0]}
  flat_got = {"/".join(k.key for k in p): np.shape(leaf) for p, leaf in
              jax.tree_util.tree_flatten_with_path(params)[0]}
  for key, shape in flat_want.items():
    if key not in flat_got:
      raise WeightsError(f"the weights lack {key}: this is not the FID "
                         f"Inception's state dict ({WEIGHTS_URL})")
    if flat_got[key] != shape:
      raise WeightsError(f"{key} has shape {flat_got[key]}, expected {shape}:"
                         f" this is not the FID Inception's state dict")
  extra = sorted(set(flat_got) - set(flat_want))
  if extra:
    raise WeightsError(f"unexpected parameter {extra[0]}: this is not the "
                       f"FID Inception's state dict")
  return params


def load_params(path: str = "") -> Any:
  """The FID Inception's params from ``path`` (default
  :func:`default_path`)."""
  return params_from_state_dict(read_state_dict(path or default_path()))


def convert(pth: str, out: str = "") -> str:
  """Writes the ``.pth`` state dict at ``pth`` as safetensors to ``out``
  (default :func:`default_path`), checked first; never overwrites."""
  out = out or default_path()
  if paths.exists(out):
    raise FileExistsError(f"{out} exists: remove it or pass another --out")
  state = read_state_dict(pth)
  params_from_state_dict(state)  # refuse anything but the FID Inception
  paths.write_bytes(out, save({k: np.ascontiguousarray(v)
                               for k, v in state.items()}))
  return out


def main(argv=None) -> int:
  """``python -m ddpm_jax.interop.inception_weights --pth F [--out G]``."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pth", required=True, help="pytorch-fid's .pth")
  parser.add_argument("--out", default="", help="safetensors output "
                      f"(default {default_path()})")
  args = parser.parse_args(argv)
  try:
    print(convert(args.pth, args.out))
  except (OSError, WeightsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
