"""ddpm_jax.record_files: TFRecord files and tfds splits read through the
path layer match TensorFlow's own reader, and damage is named."""

import numpy as np
import pytest

from ddpm_jax import record_files

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def records(tmp_path):
  """A TFRecord file written by TensorFlow: 7 records of lengths 0..60."""
  path = str(tmp_path / "r.tfrecord")
  want = [bytes(np.random.default_rng(i).integers(0, 256, 10 * i,
                                                  dtype=np.uint8))
          for i in range(7)]
  with tf.io.TFRecordWriter(path) as w:
    for r in want:
      w.write(r)
  return path, want


def test_records_match_tensorflows_reader(records):
  path, want = records
  got = list(record_files.read_records(path))
  assert got == want
  assert got == [t.numpy() for t in tf.data.TFRecordDataset(path)]
  assert list(record_files.read_records(path, skip=2, take=3)) == want[2:5]
  assert list(record_files.read_records(path, skip=6)) == want[6:]
  assert list(record_files.read_records(path, skip=7, take=0)) == []


def test_a_damaged_or_truncated_file_is_named(records, tmp_path):
  path, _ = records
  raw = open(path, "rb").read()
  bad = str(tmp_path / "bad.tfrecord")
  flipped = bytearray(raw)
  flipped[-10] ^= 1  # a byte of the last record's data
  open(bad, "wb").write(bytes(flipped))
  with pytest.raises(record_files.RecordError,
                     match=r"bad.tfrecord is damaged at record 6 \(data"):
    list(record_files.read_records(bad))
  open(bad, "wb").write(raw[:-3])
  with pytest.raises(record_files.RecordError,
                     match=r"bad.tfrecord is truncated at record 6"):
    list(record_files.read_records(bad))
  # Asked for more records than the file holds: truncated, not short.
  with pytest.raises(record_files.RecordError, match="truncated at record 7"):
    list(record_files.read_records(path, skip=5, take=3))


def test_split_records_are_the_splits_records(prepared_tfds):
  builder = tfds.builder("ddpm_jax_tiny_images", data_dir=prepared_tfds)

  def ids(records):  # image i is constant 10 i
    return [int(builder.info.features.deserialize_example_np(r)["image"][
        0, 0, 0]) // 10 for r in records]

  # Stored order: what as_dataset without shuffling reads.
  for split in ("train", "train[5:12]",
                tfds.split_for_jax_process("train", process_index=1,
                                           process_count=2)):
    ours = ids(record_files.split_records(builder, split))
    theirs = [int(ex["image"][0, 0, 0]) // 10 for ex in tfds.as_numpy(
        builder.as_dataset(split=split, shuffle_files=False))]
    assert ours == theirs and len(ours) > 0
  # (Stored order is not generation order: tfds shuffles as it prepares.)
  assert len(set(ids(record_files.split_records(builder, "train[5:12]")))) \
      == 7
