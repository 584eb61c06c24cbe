"""The records of a prepared tfds split, read through :mod:`ddpm_jax.paths`
without TensorFlow.

``builder.as_dataset`` would open the record files with ``tf.data``,
straight through TensorFlow's file systems: around the path layer (and its
configuration: with ``EPATH_USE_TF=false`` etils.epath uses gcsfs, which
also reaches a GCS emulator) and with TensorFlow installed. Here the
split's file instructions are tfds' own (so ``tfds.split_for_jax_process``
parts are exact) and the TFRecord framing is read with its CRCs checked.
"""

import struct
from typing import Iterator, Optional

import google_crc32c
import numpy as np

from ddpm_jax import paths
from ddpm_jax.streams import DataError

# TFRecord framing: uint64 length, masked CRC32C of the length, the data,
# masked CRC32C of the data; little-endian.
_HEAD = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class RecordError(DataError):
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


def split_records(builder, split,
                  shuffle_seed: Optional[int] = None) -> Iterator[bytes]:
  """The serialized examples of ``split`` (a name, a slice such as
  ``'train[:10%]'`` or a ``tfds.split_for_jax_process`` part) of the
  prepared tfds ``builder``: its files in stored order, or in an order
  drawn from ``shuffle_seed``, each file's records in stored order."""
  instructions = list(builder.info.splits[split].file_instructions)
  order = np.arange(len(instructions))
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(order)
  for k in order:
    ins = instructions[k]
    yield from read_records(ins.filename, int(ins.skip), int(ins.take))
