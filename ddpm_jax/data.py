"""Input pipelines: the offline ``digits`` dataset, a folder of images, and
tfds image datasets.

Both yield float32 NHWC batches scaled to [-1, 1] through one interface,
:func:`create_input_iter`. The order is a pure function of (seed, step), so
a run resumed at step s sees the batches it would have seen.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 images, shipped
inside the scikit-learn wheel, so no network is needed). It is split once,
deterministically, into 1,500 training and 297 test images.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np

DIGITS_NUM_TRAIN = 1500


class DataError(ValueError):
  """A dataset cannot be read; the message says which and what to do."""


def digits_images(split: str = "train", image_size: int = 8) -> np.ndarray:
  """The digits as float32 [N, S, S, 1] in [-1, 1] (S = ``image_size``)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  images = load_digits().images.astype(np.float64) / 16.0  # [1797, 8, 8]
  order = np.random.default_rng(20200619).permutation(len(images))
  if split == "train":
    images = images[order[:DIGITS_NUM_TRAIN]]
  elif split == "test":
    images = images[order[DIGITS_NUM_TRAIN:]]
  elif split != "all":
    raise DataError(f"digits has splits 'train', 'test' and 'all', not "
                    f"{split!r}: set data.split")
  if image_size != 8:
    if image_size % 8:
      raise DataError(f"digits are 8x8; data.image_size must be a multiple of"
                      f" 8, got {image_size}")
    images = _bilinear_upsample(images, image_size // 8)
  return (images * 2.0 - 1.0).astype(np.float32)[..., None]


def _bilinear_upsample(images: np.ndarray, factor: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = images.shape[1] * factor
  return np.stack([
      np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize(
          (size, size), Image.BILINEAR)) for im in images
  ]).clip(0.0, 1.0)


def array_batches(images: np.ndarray, batch_size: int, seed: int,
                  start_step: int = 0, random_flip: bool = False
                  ) -> Iterator[np.ndarray]:
  """Endless batches of an in-memory array; epoch e is the permutation drawn
  from (seed, e); the last partial batch of an epoch is dropped."""
  n = len(images)
  if batch_size > n:
    raise DataError(f"training.batch_size {batch_size} exceeds the dataset "
                    f"size {n}: lower training.batch_size")
  per_epoch = n // batch_size
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    rng = np.random.default_rng([seed, epoch])
    idx = rng.permutation(n)[i * batch_size:(i + 1) * batch_size]
    batch = images[idx]
    if random_flip:
      flip = np.random.default_rng([seed, epoch, i, 1]).random(batch_size) < 0.5
      batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
    yield batch
    step += 1


def _tfds_dataset(name: str, split: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"unknown tfds dataset {name!r} (data.name): "
                    f"{str(e).splitlines()[0]}") from None
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f"tfds dataset {name!r} is not in {builder.data_dir!r} and could not "
        f"be downloaded (it needs the network on first use): prepare it on a "
        f"machine with internet (`tfds build {name}`) and point data.data_dir "
        f"at it, or use data.name='digits' ({type(e).__name__})") from None
  return builder.as_dataset(split=split, shuffle_files=False)


def tfds_batches(name: str, split: str, batch_size: int, image_size: int,
                 channels: int, seed: int, start_step: int = 0,
                 random_flip: bool = True, data_dir: Optional[str] = None
                 ) -> Iterator[np.ndarray]:
  """Endless batches of a tfds image dataset: center crop to a square,
  area resize to ``image_size``, optional flip, scale to [-1, 1]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  ds = _tfds_dataset(name, split, data_dir)
  if "image" not in ds.element_spec:
    raise DataError(f"tfds dataset {name!r} has no 'image' feature")
  have = ds.element_spec["image"].shape[-1]
  if have != channels:
    raise DataError(f"tfds dataset {name!r} has {have}-channel images but "
                    f"data.channels is {channels}: set data.channels={have}")

  def prep(example):
    img = example["image"]
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    s = tf.minimum(h, w)
    img = tf.image.crop_to_bounding_box(img, (h - s) // 2, (w - s) // 2, s, s)
    img = tf.image.resize(img, [image_size, image_size], method="area",
                          antialias=True)
    return tf.cast(img, tf.float32) / 127.5 - 1.0

  def flip(i, img):
    seeds = tf.stack([tf.cast(seed, tf.int64), i])
    return tf.image.stateless_random_flip_left_right(img, seeds)

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).cache()
  ds = ds.repeat().shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
  if random_flip:
    ds = ds.enumerate().map(flip, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).skip(start_step)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def _center_crop_resize(img, size: int):
  """The central square of a PIL image, resized to ``size`` (bicubic; box
  filtering when shrinking by 2x or more first, to avoid aliasing)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
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
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise DataError(f"data.folder {path!r} is not a directory: set "
                    f"--config.data.folder to a folder of images")
  files = sorted(
      os.path.join(root, f) for root, _, names in os.walk(path)
      for f in names if f.lower().endswith(IMAGE_SUFFIXES))
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
      with Image.open(f) as img:
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


def create_input_iter(config, start_step: int = 0) -> Iterator[np.ndarray]:
  """Training batches for ``config.data`` from step ``start_step`` on."""
  d = config.data
  batch_size = config.training.batch_size
  if d.name == "digits":
    if d.channels != 1:
      raise DataError("digits are grayscale: set data.channels=1")
    images = digits_images(d.get("split", "train"), d.image_size)
    return array_batches(images, batch_size, config.seed, start_step,
                         d.random_flip)
  if d.name == "folder":
    images = folder_images(d.get("folder", ""), d.image_size, d.channels)
    return array_batches(images, batch_size, config.seed, start_step,
                         d.random_flip)
  return tfds_batches(d.name, d.get("split", "train"), batch_size,
                      d.image_size, d.channels, config.seed, start_step,
                      d.random_flip, d.get("data_dir") or None)
