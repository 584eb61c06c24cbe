"""Converting samples to uint8 images and writing PNG grids and .npz files."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from ddpm_jax import paths


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats to uint8 [0, 255], as the original code rounds them."""
  x = np.asarray(x, dtype=np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int = 0, pad: int = 1,
              scale: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] to one [rows*(H+pad)+pad, ..., C] grid image.

  ``scale`` enlarges each pixel (nearest neighbour) so small images stay
  visible.
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255,
                 dtype=np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] image (C = 1 or 3), atomically."""
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  paths.write_bytes(path, buf.getvalue())


def write_samples(prefix: str, samples: np.ndarray, scale: int = 1) -> None:
  """``prefix.png`` (a grid) and ``prefix.npz`` (uint8 array 'images') from
  samples in [-1, 1]."""
  images = to_uint8(samples)
  write_png(prefix + ".png", make_grid(images, scale=scale))
  write_npz(prefix + ".npz", images=images)


def write_npz(path: str, **arrays) -> None:
  """A compressed ``.npz`` of ``arrays``, written atomically."""
  paths.save_npz(path, **arrays)


def write_strip(path: str, rows: np.ndarray, scale: int = 1) -> None:
  """A PNG with one row per leading index of ``rows`` [R, K, H, W, C]
  (values in [-1, 1]): e.g. each sample's predicted x_0 over time."""
  rows = np.asarray(rows)
  r, k = rows.shape[:2]
  write_png(path, make_grid(to_uint8(rows.reshape((r * k,) + rows.shape[2:])),
                            ncols=k, scale=scale))


def write_gif(path: str, frames: np.ndarray, scale: int = 1,
              frame_ms: int = 100) -> None:
  """An animated GIF, one grid per frame of ``frames`` [K, N, H, W, C]
  (values in [-1, 1]), the last frame held for a second; atomically."""
  grids = [make_grid(to_uint8(f), scale=scale) for f in np.asarray(frames)]
  images = [Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
            for g in grids]
  buf = io.BytesIO()
  images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                 duration=[frame_ms] * (len(images) - 1) + [1000], loop=0)
  paths.write_bytes(path, buf.getvalue())


def write_progression(prefix: str, trajectory: dict, scale: int = 1) -> None:
  """Fig. 6 from a sampler trajectory (``return_every``): ``prefix_x0.png``
  (each sample's predicted x_0 left to right as t falls),
  ``prefix_xt.png`` (the same for x_t), ``prefix.gif`` (the x_t grid over
  time) and ``prefix_trajectory.npz`` (uint8 ``x_t``, ``x0``, and ``t``)."""
  x_t, x0 = np.asarray(trajectory["x_t"]), np.asarray(trajectory["x0"])
  write_strip(prefix + "_x0.png", np.swapaxes(x0, 0, 1), scale)
  write_strip(prefix + "_xt.png", np.swapaxes(x_t, 0, 1), scale)
  write_gif(prefix + ".gif", x_t, scale)
  write_npz(prefix + "_trajectory.npz", x_t=to_uint8(x_t), x0=to_uint8(x0),
            t=np.asarray(trajectory["t"]))


def display_scale(image_size: int) -> int:
  """Pixel enlargement that makes a grid cell at least 32 pixels wide."""
  return max(1, 32 // image_size)
