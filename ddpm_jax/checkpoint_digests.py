"""Digests and finiteness of a checkpoint's arrays, checked at restore.

TensorFlow's checkpoint bundle stores a CRC32C of every tensor and checks
it when reading; this is the same check for the train state's leaves. Each
leaf's digest is two 32-bit position-weighted sums of its bytes (read as
32-bit words; 16- and 8-bit types widened first): any single changed bit
changes the first sum (its weights are odd), and a random corruption
leaves both unchanged with probability about 2^-64. Unlike a CRC over the
bytes, the sums do not depend on how the array is split over devices or
hosts: they are computed where the arrays lie, by one small jitted program
per distinct leaf shape and type (one program for the whole state would
take seconds to compile, as it grows with the number of leaves), and a
checkpoint written by 8 devices verifies when restored on 1.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# The digest scheme's name, saved beside the digests.
FORMAT = "wsum64-v1"


def _words(x: jnp.ndarray) -> jnp.ndarray:
  """The bytes of ``x`` as uint32 words, flattened (one word per element
  of a 32-bit type, two per 64-bit element, one per narrower element)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.reshape(-1).astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
  bits = jax.lax.bitcast_convert_type(x, unsigned[size])
  return bits.reshape(-1).astype(jnp.uint32)


@jax.jit
def _leaf_summary(x: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """(first sum, second sum, all finite) of one array."""
  w = _words(x)
  i = jax.lax.iota(jnp.uint32, w.shape[0])
  # Odd weights for the first sum; a multiplicative hash of the position
  # (made odd) for the second, over the words mixed with their own shifts.
  first = jnp.sum(w * (2 * i + 1), dtype=jnp.uint32)
  mixed = (i + jnp.uint32(1)) * jnp.uint32(0x9E3779B1)
  second = jnp.sum((w ^ (w >> 13)) * (mixed ^ (mixed >> 15) | 1),
                   dtype=jnp.uint32)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    finite = jnp.all(jnp.isfinite(x))
  else:
    finite = jnp.asarray(True)
  return first, second, finite


def leaf_name(path: Tuple[Any, ...]) -> str:
  """'params.conv_in.kernel' for a pytree key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return ".".join(parts)


def summarize(tree: Any) -> Dict[str, Tuple[str, bool]]:
  """{leaf name: (digest as 16 hex digits, whether every value is finite)}
  for every array of ``tree``."""
  named = jax.tree_util.tree_leaves_with_path(tree)
  if not named:
    return {}
  # One program at a time: on the CPU backend's simulated devices, small
  # programs with all-reduces dispatched back to back can deadlock in
  # XLA's collective rendezvous (seen with 8 devices on 2 cores).
  jax.block_until_ready([x for _, x in named])
  values = [jax.device_get(_leaf_summary(x)) for _, x in named]
  out = {}
  for (path, _), (first, second, finite) in zip(named, values):
    out[leaf_name(path)] = (f"{int(first):08x}{int(second):08x}",
                            bool(np.asarray(finite)))
  return out


def nonfinite(summary: Mapping[str, Tuple[str, bool]]) -> List[str]:
  """The names of the leaves with a NaN or an infinity, sorted."""
  return sorted(name for name, (_, finite) in summary.items() if not finite)


def shapes(tree: Any) -> Dict[str, List[int]]:
  """{leaf name: its shape} for every array of ``tree``."""
  return {leaf_name(path): [int(d) for d in np.shape(x)]
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def to_json(summary: Mapping[str, Tuple[str, bool]],
            leaf_shapes: Optional[Mapping[str, List[int]]] = None) -> dict:
  """What a checkpoint stores: the scheme, each leaf's digest and, where
  given, each leaf's shape (:func:`shapes`; a restore compares the
  parameters' with the config's model before it reads any array)."""
  out = {"format": FORMAT,
         "digests": {name: digest for name, (digest, _) in summary.items()}}
  if leaf_shapes is not None:
    out["shapes"] = dict(leaf_shapes)
  return out


def mismatches(saved: Mapping[str, Any],
               summary: Mapping[str, Tuple[str, bool]]) -> List[str]:
  """The leaves whose digest differs from the one ``saved`` (a
  :func:`to_json` dict) holds, or that only one of the two has, sorted. A
  scheme this version does not know is reported as such."""
  if saved.get("format") != FORMAT:
    return [f"(digest format {saved.get('format')!r}, not {FORMAT!r})"]
  digests = saved.get("digests") or {}
  names = set(digests) | set(summary)
  return sorted(name for name in names
                if name not in digests or name not in summary
                or digests[name] != summary[name][0])
