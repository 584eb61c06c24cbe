"""tfds image datasets, read without TensorFlow: a prepared dataset's
record files through :mod:`ddpm_jax.record_files`, each example decoded by
tfds' NumPy parser and PIL, centre-cropped to a square and area-resized in
NumPy. TensorFlow is needed only to prepare a dataset (``tfds build``),
which the ``tf`` extra installs.

Each process reads only its own equal part of a split
(``tfds.split_for_jax_process``). The stream is a function of (seed,
position): epoch e of process p reads its files in an order drawn from
(seed, e, p) through a shuffle buffer drawn from the same, and flips
example i of the epoch from (seed, e, p, i).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import io
import itertools
import logging
import os
import queue
import threading
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm_jax import paths
from ddpm_jax import reachability
from ddpm_jax import record_files
from ddpm_jax import streams
from ddpm_jax.streams import Batches, DataError, Position

TF_EXTRA = "pip install 'ddpm-jax[tf]'"


class _VariantFolderWarnings(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Variant folder ")


@contextlib.contextmanager
def _no_variant_folder_warnings():
  """Without tfds' 'Variant folder ... has no dataset_info.json' warnings
  (logged for a dataset that is not prepared, or a folder of an earlier
  download that failed): whether the dataset is prepared is said in this
  module's own one line."""
  logger, quiet = logging.getLogger("absl"), _VariantFolderWarnings()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def prepared_builder(name: str, data_dir: Optional[str],
                     download: bool = True):
  """The tfds builder of ``name`` in ``data_dir``, prepared there first
  when ``download`` (which needs TensorFlow and, for most datasets, the
  network); a :class:`DataError` saying what to do otherwise."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  paths.check_reachable(data_dir)
  try:
    with _no_variant_folder_warnings():
      builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"unknown tfds dataset {name!r} (data.name): "
                    f"{str(e).splitlines()[0]}") from None
  build = (f"prepare it on a machine with internet (`tfds build {name} "
           f"--data_dir DIR`) and set data.data_dir=DIR, or use "
           f"data.name='digits'")
  with _no_variant_folder_warnings():
    if builder.is_prepared():
      return builder
  if not download:
    raise DataError(f"tfds dataset {name!r} is not in "
                    f"{builder.data_dir!r} and data.download is False: "
                    f"{build}")
  if not have_tensorflow():
    raise DataError(f"tfds dataset {name!r} is not in {builder.data_dir!r}"
                    f" and preparing it needs TensorFlow: {TF_EXTRA}, or "
                    f"{build}")
  try:
    with _leaves_nothing_on_failure(builder), _reachable_downloads():
      builder.download_and_prepare()
  except ImportError as e:
    # A package that preparing this dataset needs, not the network.
    missing = getattr(e, "name", None) or str(e)
    raise DataError(
        f"tfds needs the Python package {missing!r} to prepare {name!r}: "
        f"pip install {missing} (or prepare it elsewhere: {build})"
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    unreachable = _unreachable_in(e)
    if unreachable is not None:
      raise DataError(
          f"tfds dataset {name!r} is not in {builder.data_dir!r} and could "
          f"not be downloaded: {unreachable}; {build}") from None
    raise DataError(
        f"tfds dataset {name!r} is not in {builder.data_dir!r} and could not "
        f"be downloaded (it needs the network on first use, and some "
        f"datasets a manual download): {build} ({type(e).__name__}: "
        f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
  return builder


class _Unreachable(ConnectionError):
  """A download URL whose host did not accept a connection."""


def _check_reachable_url(url: str) -> None:
  """Raises :class:`_Unreachable` unless ``url``'s host (or its proxy)
  accepts a TCP connection within
  :data:`ddpm_jax.reachability.TIMEOUT_S` (one try, no retries)."""
  why = reachability.unreachable(url)
  if why is not None:
    raise _Unreachable(f"{url} cannot be reached ({why})")


def _unreachable_in(e: BaseException) -> Optional[str]:
  """The message of the :class:`_Unreachable` in ``e``'s chain, if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, _Unreachable):
      return str(e)
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def _reachable_downloads():
  """While tfds prepares a dataset, each URL it downloads is first checked
  to be reachable (:func:`_check_reachable_url`): without the network the
  preparation fails within seconds, instead of after minutes of retries."""
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  opened = downloader._open_url  # pylint: disable=protected-access

  def checked(url, **kwargs):
    _check_reachable_url(url)
    return opened(url, **kwargs)

  downloader._open_url = checked  # pylint: disable=protected-access
  try:
    yield
  finally:
    downloader._open_url = opened  # pylint: disable=protected-access


def _entries(root: str) -> set:
  out = set()
  for d, dirs, files in os.walk(root):
    out.update(os.path.join(d, n) for n in dirs + files)
  return out


@contextlib.contextmanager
def _leaves_nothing_on_failure(builder):
  """A preparation that fails removes what it made under the local
  data_dir: the dataset's new folders and partial downloads (tfds keeps
  them under ``<data_dir>/<name>`` and ``<data_dir>/downloads/<name>``)
  and the folders it made that are left empty. Nothing that was there
  before, nor a dataset another process finished preparing meanwhile (a
  folder with its ``dataset_info.json``, of this dataset or another), nor
  another dataset's downloads, is touched."""
  root = str(builder.data_dir_root)
  if paths.is_url(root):
    yield
    return
  before = _entries(root) if os.path.isdir(root) else set()
  made_root = not os.path.exists(root)
  own = (os.path.join(root, builder.name),
         os.path.join(root, "downloads", builder.name))
  try:
    yield
  except BaseException:
    # Deepest first, so that a folder is emptied before it is looked at.
    for path in sorted(_entries(root) - before, key=len, reverse=True):
      try:
        if _in_prepared_dataset(path, root):
          continue  # another process's finished preparation
        if os.path.isdir(path) and not os.path.islink(path):
          os.rmdir(path)  # only if empty: what it held is handled above
        elif any(path.startswith(o + os.sep) for o in own):
          os.remove(path)
      except OSError:
        pass
    if made_root:
      try:
        os.rmdir(root)
      except OSError:
        pass
    raise


def _in_prepared_dataset(path: str, root: str) -> bool:
  """Whether ``path`` is or is under a folder of ``root`` that holds a
  finished preparation (tfds writes ``dataset_info.json`` last, into the
  version folder it then renames into place: its temporary name starts
  with "incomplete")."""
  while len(path) > len(root):
    if (os.path.isfile(os.path.join(path, "dataset_info.json")) and
        not os.path.basename(path).startswith("incomplete")):
      return True
    path = os.path.dirname(path)
  return False


def have_tensorflow() -> bool:
  """Whether TensorFlow is installed (needed to prepare a dataset)."""
  return importlib.util.find_spec("tensorflow") is not None


def _check_images(builder, name: str, channels: int) -> None:
  if "image" not in builder.info.features:
    raise DataError(f"tfds dataset {name!r} has no 'image' feature: choose "
                    f"an image dataset for data.name")
  have = builder.info.features["image"].shape[-1]
  if have != channels:
    raise DataError(f"tfds dataset {name!r} has {have}-channel images but "
                    f"data.channels is {channels}: set data.channels={have}")


@functools.lru_cache(maxsize=32)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in): output pixel o is the mean of the input interval
  [o, o + 1) * n_in / n_out, each input pixel weighted by its overlap."""
  scale = n_in / n_out
  w = np.zeros((n_out, n_in))
  for o in range(n_out):
    lo, hi = o * scale, (o + 1) * scale
    for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
      w[o, i] = min(hi, i + 1) - max(lo, i)
  return w / scale


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
  """A uint8 HWC image -> its central square, area-resized to ``size``
  (each output pixel the mean of the input area it covers), as float32 in
  [-1, 1]."""
  h, w = img.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  img = img[top:top + s, left:left + s].astype(np.float64)
  if s != size:
    weights = _area_weights(s, size)
    img = np.tensordot(weights, img, axes=(1, 0))  # rows: (size, s, c)
    img = np.tensordot(weights, img, axes=(1, 1)).transpose(1, 0, 2)
  return (img / 127.5 - 1.0).astype(np.float32)


def decode_image(encoded: bytes, channels: int) -> np.ndarray:
  """An encoded image (PNG, JPEG ...) as uint8 HWC with ``channels``."""
  try:
    with Image.open(io.BytesIO(encoded)) as img:
      img = img.convert("RGB" if channels == 3 else "L")
      arr = np.asarray(img, np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"a tfds image cannot be decoded: "
                    f"{str(e).splitlines()[0]}") from None
  return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _image(builder, record: bytes, size: int, channels: int,
           flip: bool) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  example = builder.info.features.deserialize_example_np(
      record, decoders={"image": tfds.decode.SkipDecoding()})
  img = square_resize(decode_image(example["image"], channels), size)
  return img[:, ::-1] if flip else img


def _shuffled(items: Iterable, size: int, rng: np.random.Generator
              ) -> Iterator:
  """``items`` through a shuffle buffer of ``size``: each arriving item
  takes the place of one drawn from the buffer, which leaves."""
  buf = []
  for item in items:
    if len(buf) < size:
      buf.append(item)
      continue
    j = int(rng.integers(size))
    yield buf[j]
    buf[j] = item
  yield from (buf[j] for j in rng.permutation(len(buf)))


def _prefetch(it: Iterator, depth: int) -> Iterator:
  """``it`` computed ``depth`` items ahead in a thread; its errors are
  raised here."""
  q, stop, done = queue.Queue(depth), threading.Event(), object()

  def fill():
    try:
      for item in it:
        while not stop.is_set():
          try:
            q.put((item, None), timeout=0.5)
            break
          except queue.Full:
            pass
        if stop.is_set():
          getattr(it, "close", lambda: None)()
          return
      q.put((done, None))
    except BaseException as e:  # pylint: disable=broad-except
      q.put((done, e))

  threading.Thread(target=fill, daemon=True).start()
  try:
    while True:
      item, error = q.get()
      if item is done:
        if error is not None:
          raise error
        return
      yield item
  finally:
    stop.set()


def check(name: str, channels: int, data_dir: Optional[str] = None,
          download: bool = True) -> None:
  """Raises the :class:`DataError` reading ``name`` would (preparing it
  first where ``download`` allows), without reading it."""
  _check_images(prepared_builder(name, data_dir, download), name, channels)


def _seed32(*parts: int) -> int:
  """A 31-bit seed from integer parts."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def _workers() -> int:
  return min(8, os.cpu_count() or 1)


def tfds_batches(name: str, split: str, batch_size: int, image_size: int,
                 channels: int, seed: int, position: Position = Position(),
                 random_flip: bool = True, data_dir: Optional[str] = None,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None,
                 shuffle_buffer: int = 10_000, download: bool = True
                 ) -> Batches:
  """Endless (batch, position) pairs from a tfds image dataset: centre crop
  to a square, area resize to ``image_size``, optional flip, [-1, 1].

  This process yields ``batch_size / process_count`` images per batch
  from its own part of the split (see the module docstring for the
  order). A resume skips the epoch's consumed records before they are
  decoded; nothing is cached in memory, so LSUN-sized datasets stream.
  With ``download`` False a dataset not yet prepared in ``data_dir`` is an
  immediate error rather than a download attempt.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  index, count = streams.process_share(process_index, process_count)
  local = streams.local_batch_size(batch_size, count)
  builder = prepared_builder(name, data_dir, download)
  _check_images(builder, name, channels)
  part = tfds.split_for_jax_process(split, process_index=index,
                                    process_count=count, drop_remainder=True)
  n_local = int(builder.info.splits[part].num_examples)
  if n_local < local:
    raise DataError(f"tfds dataset {name!r} split {split!r} has {n_local} "
                    f"examples per process, fewer than a batch of {local}: "
                    f"lower training.batch_size")

  position.check_within(n_local * count)

  def stream():
    epoch, offset = position.epoch, position.offset
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
      while True:
        skip = offset // count
        if skip + local > n_local:
          epoch, offset, skip = epoch + 1, 0, 0
        records = _shuffled(
            record_files.split_records(builder, part,
                                       _seed32(seed, epoch, index)),
            min(shuffle_buffer, n_local),
            np.random.default_rng([seed, epoch, index, 1]))
        records = itertools.islice(records, skip, None)
        for start in range(skip, n_local - local + 1, local):
          chunk = list(itertools.islice(records, local))
          flips = [random_flip and np.random.default_rng(
              [seed, epoch, index, 2, i]).random() < 0.5
                   for i in range(start, start + local)]
          batch = np.stack(list(pool.map(
              lambda r, f: _image(builder, r, image_size, channels, f),
              chunk, flips)))
          offset += batch_size
          yield batch, Position(epoch, offset)
        epoch, offset = epoch + 1, 0

  return _prefetch(stream(), 2)


def eval_images(name: str, split: str, batch_size: int, image_size: int,
                channels: int, data_dir: Optional[str] = None,
                download: bool = True, limit: Optional[int] = None
                ) -> Iterator[np.ndarray]:
  """The images of ``split`` in stored order, without flips, in batches of
  ``batch_size`` (the last may be smaller); at most ``limit`` of them.
  The dataset is checked at once; the batches are read as they are taken,
  and counted (``len``) where the split's size is recorded."""
  builder = prepared_builder(name, data_dir, download)
  _check_images(builder, name, channels)

  def batches():
    records = record_files.split_records(builder, split)
    if limit:
      records = itertools.islice(records, limit)
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
      while True:
        chunk = list(itertools.islice(records, batch_size))
        if not chunk:
          return
        yield np.stack(list(pool.map(
            lambda r: _image(builder, r, image_size, channels, False),
            chunk)))

  try:
    size = int(builder.info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except
    return batches()  # (a split tfds cannot size: no total)
  size = min(size, limit) if limit else size
  return streams.Sized(batches(), -(-size // batch_size))
