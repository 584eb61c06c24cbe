"""The examples of a prepared tfds split, read through :mod:`ddpm_jax.paths`.

A tfds dataset whose ``data_dir`` is a URL (``gs://...``) is read here
rather than by ``builder.as_dataset``, which opens its record files with
``tf.data`` straight through TensorFlow's file systems, around the path
layer (and so around its configuration: with ``EPATH_USE_TF=false``
etils.epath uses gcsfs, which also reaches a GCS emulator). This reads the
same files through the one path layer every other file goes through: the
split's file instructions (tfds' own, so ``tfds.split_for_jax_process``
parts are exact), the TFRecord framing with its CRCs checked, and tfds'
own decoding of each example.
"""

import struct
from typing import Iterator, Optional

import google_crc32c
import numpy as np

from ddpm_jax import paths

# TFRecord framing: uint64 length, masked CRC32C of the length, the data,
# masked CRC32C of the data; little-endian.
_HEAD = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
  """A record file that is truncated or damaged."""


def masked_crc(data: bytes) -> int:
  """The masked CRC32C a TFRecord file stores for ``data``."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: str, skip: int = 0,
                 take: Optional[int] = None) -> Iterator[bytes]:
  """The records of TFRecord file ``path`` from index ``skip`` on, at most
  ``take`` of them (all when None). Skipped records are seeked over, not
  read. Raises :class:`RecordError` naming the file on a truncated file or
  a CRC mismatch."""
  end = None if take is None else skip + take
  with paths.open_read(path) as f:
    i = 0
    while end is None or i < end:
      head = f.read(_HEAD.size)
      if not head and end is None:
        return
      if len(head) < _HEAD.size:
        raise RecordError(f"record file {path} is truncated at record {i}: "
                          f"prepare the dataset again")
      length, length_crc = _HEAD.unpack(head)
      if masked_crc(head[:8]) != length_crc:
        raise RecordError(f"record file {path} is damaged at record {i} "
                          f"(length checksum): prepare the dataset again")
      if i < skip:
        f.seek(length + _CRC.size, 1)
        i += 1
        continue
      body = f.read(length + _CRC.size)
      if len(body) < length + _CRC.size:
        raise RecordError(f"record file {path} is truncated at record {i}: "
                          f"prepare the dataset again")
      data = body[:length]
      if masked_crc(data) != _CRC.unpack(body[length:])[0]:
        raise RecordError(f"record file {path} is damaged at record {i} "
                          f"(data checksum): prepare the dataset again")
      yield data
      i += 1


def split_examples(builder, split, shuffle_seed: Optional[int] = None,
                   decoders=None):
  """A ``tf.data.Dataset`` of the examples of ``split`` (a name, a slice
  such as ``'train[:10%]'`` or a ``tfds.split_for_jax_process`` part) of
  the prepared tfds ``builder``, decoded as ``builder.as_dataset`` would
  with ``decoders``. The files are read in stored order, or in an order
  drawn from ``shuffle_seed``; the cardinality is known."""
  # TensorFlow takes seconds to load: only for tfds datasets.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  instructions = list(builder.info.splits[split].file_instructions)
  order = np.arange(len(instructions))
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(order)
  total = sum(int(ins.take) for ins in instructions)

  def records():
    for k in order:
      ins = instructions[k]
      yield from read_records(ins.filename, int(ins.skip), int(ins.take))

  ds = tf.data.Dataset.from_generator(
      records, output_signature=tf.TensorSpec((), tf.string))
  ds = ds.apply(tf.data.experimental.assert_cardinality(total))
  features = builder.info.features
  return ds.map(lambda s: features.deserialize_example(s, decoders=decoders))
