"""Converting samples to uint8 images and writing PNG grids and .npz files."""

from __future__ import annotations

import math
import os

import numpy as np


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
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)


def write_samples(prefix: str, samples: np.ndarray, scale: int = 1) -> None:
  """``prefix.png`` (a grid) and ``prefix.npz`` (uint8 array 'images') from
  samples in [-1, 1]."""
  images = to_uint8(samples)
  write_png(prefix + ".png", make_grid(images, scale=scale))
  tmp = prefix + ".tmp.npz"
  np.savez_compressed(tmp, images=images)
  os.replace(tmp, prefix + ".npz")


def display_scale(image_size: int) -> int:
  """Pixel enlargement that makes a grid cell at least 32 pixels wide."""
  return max(1, 32 // image_size)
