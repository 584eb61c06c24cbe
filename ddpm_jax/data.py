"""Input pipelines: the offline ``digits`` dataset, a folder of images, and
tfds image datasets (:mod:`ddpm_jax.tfds_input`).

All yield float32 NHWC batches scaled to [-1, 1] through one interface,
:func:`create_input_iter`, each with the :class:`Position` after it. The
stream is a pure function of (seed, position) and the position is saved in
every checkpoint, so a resumed run sees the batches it would have seen. On
a multi-host job each process loads only its own share of each batch.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 images, shipped
inside the scikit-learn wheel, so no network is needed). It is split once,
deterministically, into 1,500 training and 297 test images.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
from typing import Iterator, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm_jax import paths
from ddpm_jax import streams
from ddpm_jax import tfds_input
from ddpm_jax.streams import Batches, DataError, Position

__all__ = ["Batches", "DataError", "Position", "create_input_iter",
           "eval_batches", "array_batches", "digits_images", "digits_labels",
           "folder_images"]

DIGITS_NUM_TRAIN = 1500
DIGITS_NUM_IMAGES = 1797


def _digits_rows(split: str, n: int) -> np.ndarray:
  order = np.random.default_rng(20200619).permutation(n)
  if split == "train":
    return order[:DIGITS_NUM_TRAIN]
  if split == "test":
    return order[DIGITS_NUM_TRAIN:]
  if split == "all":
    return np.arange(n)
  raise DataError(f"digits has splits 'train', 'test' and 'all', not "
                  f"{split!r}: set data.split")


@functools.lru_cache(maxsize=1)
def _load_digits() -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits: pixel values 0-16 as float64 [1797, 8, 8],
  and their classes. Read from the file scikit-learn ships without
  importing it (with SciPy, a second per process), as its load_digits
  reads it; through load_digits where that file is not found."""
  spec = importlib.util.find_spec("sklearn")
  folders = (spec.submodule_search_locations or []) if spec else []
  for folder in folders:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  return digits.images.astype(np.float64), digits.target


def digits_labels(split: str = "train") -> np.ndarray:
  """The digits' classes (0-9, int32), in the order of
  :func:`digits_images`."""
  target = _load_digits()[1]
  return target[_digits_rows(split, len(target))].astype(np.int32)


def digits_images(split: str = "train", image_size: int = 8) -> np.ndarray:
  """The digits as float32 [N, S, S, 1] in [-1, 1] (S = ``image_size``)."""
  images = _load_digits()[0] / 16.0  # [1797, 8, 8]
  images = images[_digits_rows(split, len(images))]
  if image_size != 8:
    if image_size % 8:
      raise DataError(f"digits are 8x8; data.image_size must be a multiple of"
                      f" 8, got {image_size}")
    images = _bilinear_upsample(images, image_size // 8)
  return (images * 2.0 - 1.0).astype(np.float32)[..., None]


def _bilinear_upsample(images: np.ndarray, factor: int) -> np.ndarray:
  size = images.shape[1] * factor
  return np.stack([
      np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize(
          (size, size), Image.BILINEAR)) for im in images
  ]).clip(0.0, 1.0)


def array_batches(images: np.ndarray, batch_size: int, seed: int,
                  position: Position = Position(), random_flip: bool = False,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None,
                  labels: Optional[np.ndarray] = None) -> Batches:
  """Endless (batch, position) pairs from an in-memory array; with
  ``labels`` each batch is ``{'image': ..., 'label': ...}``.

  Epoch e visits the images in the permutation drawn from (seed, e); a
  global batch is the next ``batch_size`` of it (a remainder too short for
  a batch is dropped) and this process yields its own rows of it, so the
  global batch does not depend on the process count. ``position`` says
  where to start.
  """
  n = len(images)
  if batch_size > n:
    raise DataError(f"training.batch_size {batch_size} exceeds the dataset "
                    f"size {n}: lower training.batch_size")
  index, count = streams.process_share(process_index, process_count)
  local = streams.local_batch_size(batch_size, count)
  rows = slice(index * local, (index + 1) * local)
  position.check_within(n)
  epoch, offset = position.epoch, position.offset
  while True:
    if offset + batch_size > n:
      epoch, offset = epoch + 1, 0
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[offset:offset + batch_size][rows]
    batch = images[idx]
    if random_flip:
      flip = np.random.default_rng([seed, epoch, offset, 1]).random(
          batch_size)[rows] < 0.5
      batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
    offset += batch_size
    if labels is not None:
      batch = {"image": batch, "label": labels[idx]}
    yield batch, Position(epoch, offset)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def _center_crop_resize(img, size: int):
  """The central square of a PIL image, resized to ``size`` (bicubic; box
  filtering when shrinking by 2x or more first, to avoid aliasing)."""
  w, h = img.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  img = img.crop((left, top, left + side, top + side))
  if side >= 2 * size:
    img = img.reduce(side // size)
  return img.resize((size, size), Image.BICUBIC)


def folder_images(path: str, image_size: int, channels: int) -> np.ndarray:
  """Every image file under ``path`` (recursively, in sorted order), centre
  cropped, resized to ``image_size`` and scaled to [-1, 1]: (N, S, S, C).

  Images must have ``channels`` channels (1: grayscale 'L', 3: 'RGB');
  others are refused rather than silently converted.
  """
  if not paths.isdir(path):
    raise DataError(f"data.folder {path!r} is not a directory: set "
                    f"--config.data.folder to a folder of images")
  files = [f for f in paths.walk_files(path)
           if f.lower().endswith(IMAGE_SUFFIXES)]
  if not files:
    raise DataError(f"data.folder {path!r} holds no image files "
                    f"({', '.join(IMAGE_SUFFIXES)})")
  modes = {1: ("L",), 3: ("RGB",)}
  if channels not in modes:
    raise DataError(f"data.channels={channels}: image folders support 1 "
                    f"(grayscale) or 3 (RGB)")
  out = np.empty((len(files), image_size, image_size, channels), np.uint8)
  for i, f in enumerate(files):
    try:
      with Image.open(io.BytesIO(paths.read_bytes(f))) as img:
        img.load()
        mode = img.mode
        if mode == "P":  # a palette: its colours, in the wanted layout
          mode = "RGB" if channels == 3 else "L"
        if mode not in modes[channels]:
          raise DataError(
              f"image {f} has mode {img.mode} ({len(img.getbands())} "
              f"channels) but data.channels={channels}: convert the folder "
              f"or set --config.data.channels")
        img = img.convert(mode)
        arr = np.asarray(_center_crop_resize(img, image_size), np.uint8)
    except (UnidentifiedImageError, OSError) as e:
      raise DataError(f"cannot read image {f}: "
                      f"{str(e).splitlines()[0]}") from None
    out[i] = arr.reshape(image_size, image_size, channels)
  return out.astype(np.float32) / 127.5 - 1.0


def _classes(config, num_classes: Optional[int]) -> int:
  """The label count a pipeline must yield, checked against the data."""
  d = config.data
  classes = (int(config.model.num_classes) if num_classes is None
             else int(num_classes))
  if d.name == "digits":
    if d.channels != 1:
      raise DataError("digits are grayscale: set data.channels=1")
    if classes and classes != 10:
      raise DataError(f"digits has 10 classes: set model.num_classes=10, "
                      f"not {classes}")
  elif classes and d.name == "folder":
    raise DataError("an image folder has no labels: set model.num_classes=0")
  elif classes:
    raise DataError(f"class labels are read from digits only so far, not "
                    f"{d.name!r}: set model.num_classes=0")
  return classes


def check_source(config, num_classes: Optional[int] = None) -> None:
  """Raises the :class:`DataError` that reading ``config.data`` would,
  without reading it (a tfds dataset is prepared first, where allowed):
  for the entry points to call before they write anything."""
  d = config.data
  _classes(config, num_classes)
  if d.name == "digits":
    _digits_rows(d.split, DIGITS_NUM_IMAGES)
  elif d.name == "folder":
    if not paths.isdir(d.folder):
      raise DataError(f"data.folder {d.folder!r} is not a directory: set "
                      f"--config.data.folder to a folder of images")
  else:
    tfds_input.check(d.name, d.channels, d.data_dir or None, d.download)


def create_input_iter(config, position: Position = Position(),
                      process_index: Optional[int] = None,
                      process_count: Optional[int] = None,
                      num_classes: Optional[int] = None) -> Batches:
  """(local batch, position) pairs for ``config.data`` from ``position`` on;
  this process's share of each global batch of ``training.batch_size``.
  With labels (``num_classes``, default ``model.num_classes``, > 0) each
  batch is ``{'image', 'label'}``."""
  d = config.data
  batch_size = config.training.batch_size
  where = dict(process_index=process_index, process_count=process_count)
  classes = _classes(config, num_classes)
  if d.name == "digits":
    images = digits_images(d.split, d.image_size)
    labels = digits_labels(d.split) if classes else None
    return array_batches(images, batch_size, config.seed, position,
                         d.random_flip, labels=labels, **where)
  if d.name == "folder":
    images = folder_images(d.folder, d.image_size, d.channels)
    return array_batches(images, batch_size, config.seed, position,
                         d.random_flip, **where)
  return tfds_input.tfds_batches(
      d.name, d.split, batch_size, d.image_size, d.channels, config.seed,
      position, d.random_flip, d.data_dir or None,
      shuffle_buffer=d.shuffle_buffer, download=d.download, **where)


def eval_batches(config, split: str, batch_size: int,
                 limit: Optional[int] = None) -> Iterator[np.ndarray]:
  """The images of ``split`` of ``config.data`` in a fixed order, without
  flips, in batches of ``batch_size`` (the last may be smaller); at most
  ``limit`` images. For evaluation; its ``len`` is the number of batches
  where the split's size is known."""
  d = config.data
  if d.name in ("digits", "folder"):
    if d.name == "digits":
      images = digits_images(split, d.image_size)
    else:
      images = folder_images(d.folder, d.image_size, d.channels)
    images = images[:limit] if limit else images
    return streams.Sized(
        (images[i:i + batch_size] for i in range(0, len(images), batch_size)),
        -(-len(images) // batch_size))
  return tfds_input.eval_images(d.name, split, batch_size, d.image_size,
                                d.channels, d.data_dir or None, d.download,
                                limit)
