"""tfds image datasets (ddpm_jax.tfds_input), read without TensorFlow.

The datasets here are real tfds datasets prepared on disk from generated
examples (offline, in a second): the reader opens the prepared record
files itself, so ``tfds.testing.mock_data``, which replaces
``builder.as_dataset``, would leave it untested.
"""

import functools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ddpm_jax import data
from ddpm_jax import tfds_input
from tests.test_data import take, tiny_train_config
from tests.tfds_fakes import prepare_cifar10_stand_in
from tests import tfds_fakes
from tests.tfds_fakes import register_unreachable_images
from tests.tfds_fakes import tiny_image_ids as ids
from tests.tfds_fakes import tiny_images_stream

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("tensorflow")  # to prepare the datasets
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tfds_pipeline_shuffles_flips_and_resumes(tmp_path):
  images = prepare_cifar10_stand_in(tmp_path)
  want = images / 127.5 - 1.0  # 32 -> 32: the area resize is exact

  def stream(position=data.Position(), n=9, **kw):
    return take(tfds_input.tfds_batches(
        "cifar10", "train", 4, 32, 3, seed=3, position=position,
        data_dir=str(tmp_path), **kw), n)

  seq, pos = stream()
  assert seq[0].shape == (4, 32, 32, 3) and seq[0].dtype == np.float32
  assert pos[0] == data.Position(0, 4) and pos[4] == data.Position(1, 4)

  def which(img):  # (index, flipped) of a batch image among the 16
    for i, w in enumerate(want):
      for flipped, ref in ((False, w), (True, w[:, ::-1])):
        if np.allclose(img, ref, rtol=0, atol=1e-6):
          return i, flipped
    raise AssertionError("not an image of the dataset")

  epochs = [[which(img) for b in seq[k:k + 4] for img in b]
            for k in (0, 4)]
  for epoch in epochs:  # each epoch visits each image once
    assert sorted(i for i, _ in epoch) == list(range(16))
  assert [i for i, _ in epochs[0]] != [i for i, _ in epochs[1]]
  assert [i for i, _ in epochs[0]] != list(range(16))  # shuffled
  flips = [f for epoch in epochs for _, f in epoch]
  assert 4 < sum(flips) < 28
  again, _ = stream()
  for a, b in zip(seq, again):
    np.testing.assert_array_equal(a, b)
  # A resume reads on from the saved position, across an epoch's end.
  for k in (1, 3, 4, 6):
    got, after = stream(position=pos[k], n=1)
    np.testing.assert_array_equal(got[0], seq[k + 1])
    assert after[0] == pos[k + 1]
  # No flips: the stored images, in the shuffled order.
  plain, _ = stream(n=4, random_flip=False)
  assert not any(f for b in plain for _, f in map(which, b))
  with pytest.raises(data.DataError, match="data.channels=3"):
    next(tfds_input.tfds_batches("cifar10", "train", 4, 32, 1, seed=0,
                                 data_dir=str(tmp_path)))
  with pytest.raises(data.DataError, match="fewer than a batch of 32"):
    next(tfds_input.tfds_batches("cifar10", "train", 32, 32, 3, seed=0,
                                 data_dir=str(tmp_path)))


def test_tfds_each_process_reads_its_own_part(prepared_tfds):
  def stream(index, count, position=None, n=6):
    return tiny_images_stream(prepared_tfds, index, count, position, n)

  # 2 processes x 10 images, 2 per batch: each epoch (5 batches) visits its
  # own 10 images once, and the two processes' images are disjoint.
  (a, pa), (b, pb) = stream(0, 2), stream(1, 2)
  assert all(x.shape == (2, 8, 8, 3) for x in a + b)
  assert pa == pb and pa[4] == data.Position(0, 20)
  assert pa[5] == data.Position(1, 4)
  seen_a = sorted(i for x in a[:5] for i in ids(x))
  seen_b = sorted(i for x in b[:5] for i in ids(x))
  assert len(set(seen_a)) == len(set(seen_b)) == 10
  assert sorted(seen_a + seen_b) == list(range(20))
  one, _ = stream(0, 1, n=5)
  assert sorted(i for x in one for i in ids(x)) == list(range(20))
  # The epochs are shuffled differently.
  assert ids(a[5]) != ids(a[0])
  # Pixel p becomes p / 127.5 - 1 (constant images stay constant through
  # the area resize).
  values = np.unique(np.concatenate([x.ravel() for x in one]))
  np.testing.assert_allclose(values, np.arange(20) * 10 / 127.5 - 1.0,
                             rtol=0, atol=1e-6)
  # A resume mid-epoch and at the epoch's end reads what the stream read.
  for k in (1, 4):
    got, _ = stream(1, 2, position=pb[k], n=1)
    np.testing.assert_array_equal(got[0], b[k + 1])
  # A saved offset beyond the dataset (damaged, or the data changed) is
  # refused, not silently turned into another stream.
  with pytest.raises(data.DataError,
                     match="lies beyond the dataset's 20 examples"):
    stream(0, 2, position=data.Position(0, 22), n=1)


def test_each_epoch_reads_the_files_in_another_order(tmp_path):
  # 4 record files of 5 images, no shuffle buffer: an epoch is the files
  # read whole, in an order drawn from (seed, epoch, process); the next
  # epoch draws another.
  pytest.importorskip("tensorflow")
  import tensorflow_datasets as tfds
  from ddpm_jax import record_files
  from tests.tfds_fakes import prepare_tiny_images
  prepare_tiny_images(tmp_path, num_shards=4)
  builder = tfds.builder("ddpm_jax_tiny_images", data_dir=str(tmp_path))
  stored = [int(builder.info.features.deserialize_example_np(r)["image"][
      0, 0, 0]) // 10 for r in record_files.split_records(builder, "train")]
  files = {tuple(stored[k:k + 5]) for k in range(0, 20, 5)}
  assert len(builder.info.splits["train"].file_instructions) == 4
  it = tfds_input.tfds_batches(
      "ddpm_jax_tiny_images", "train", 4, 8, 3, seed=7, random_flip=False,
      data_dir=str(tmp_path), shuffle_buffer=1)
  seen = [i for _ in range(10) for i in ids(next(it)[0])]
  epochs = [seen[:20], seen[20:]]
  for epoch in epochs:
    assert {tuple(epoch[k:k + 5]) for k in range(0, 20, 5)} == files
  assert epochs[0] != epochs[1]


def test_square_resize_matches_tensorflows_area_resize():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(0)
  # uint8 0 -> -1 and 255 -> +1 exactly.
  for value, want in ((0, -1.0), (255, 1.0)):
    got = tfds_input.square_resize(np.full((6, 4, 3), value, np.uint8), 4)
    assert got.shape == (4, 4, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
  # Shrinking by whole and fractional factors, growing, and the identity,
  # after the central square crop: tf.image.resize's area method (which
  # sums in float32, where this weighs in float64: 1e-5 on [-1, 1]).
  for shape, size in (((37, 29, 3), 8), ((20, 24, 1), 6), ((10, 12, 3), 16),
                      ((32, 32, 3), 32), ((64, 40, 3), 12)):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    s = min(shape[:2])
    top, left = (shape[0] - s) // 2, (shape[1] - s) // 2
    ref = tf.image.resize(img[top:top + s, left:left + s], [size, size],
                          method="area", antialias=True)
    ref = np.asarray(ref, np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(tfds_input.square_resize(img, size), ref,
                               rtol=0, atol=1e-5)


def test_eval_images_in_stored_order(tmp_path):
  prepare_cifar10_stand_in(tmp_path, n=10)
  batches = tfds_input.eval_images("cifar10", "train", 4, 16, 3,
                                   str(tmp_path))
  assert len(batches) == 3  # counted before reading (a bar's total)
  got = list(batches)
  assert [len(b) for b in got] == [4, 4, 2]
  # The order of the files (tfds shuffles examples as it prepares them),
  # as TensorFlow's reader sees it.
  stored = tfds.builder("cifar10", data_dir=str(tmp_path)).as_dataset(
      split="train", shuffle_files=False)
  ref = np.stack([tfds_input.square_resize(ex["image"], 16)
                  for ex in tfds.as_numpy(stored)])
  np.testing.assert_array_equal(np.concatenate(got), ref)
  batches = tfds_input.eval_images("cifar10", "train", 4, 16, 3,
                                   str(tmp_path), limit=5)
  assert len(batches) == 2
  assert [len(b) for b in batches] == [4, 1]


def test_reading_needs_no_tensorflow(prepared_tfds):
  # With TensorFlow made unimportable, a prepared dataset still streams;
  # preparing one says which extra to install.
  code = f"""
import sys
class NoTF:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ImportError("no tensorflow here")
sys.meta_path.insert(0, NoTF())
from ddpm_jax import data, tfds_input
batch, _ = next(tfds_input.tfds_batches(
    "ddpm_jax_tiny_images", "train", 4, 8, 3, seed=0,
    data_dir={prepared_tfds!r}))
assert batch.shape == (4, 8, 8, 3), batch.shape
first = next(tfds_input.eval_images("ddpm_jax_tiny_images", "train", 20, 8,
                                    3, {prepared_tfds!r}))
assert first.shape == (20, 8, 8, 3), first.shape
assert "tensorflow" not in sys.modules
tfds_input.have_tensorflow = lambda: False
try:
  tfds_input.prepared_builder("mnist", {prepared_tfds!r})
except data.DataError as e:
  print(e)
"""
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "preparing it needs TensorFlow: pip install 'ddpm-jax[tf]'" in \
      p.stdout, p.stdout


def test_tfds_not_prepared_says_what_to_do(tmp_path, monkeypatch):
  with pytest.raises(data.DataError, match="data.download is False"):
    next(tfds_input.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                                 data_dir=str(tmp_path), download=False))
  with pytest.raises(data.DataError, match="unknown tfds dataset"):
    next(tfds_input.tfds_batches("no_such_dataset_xyz", "train", 4, 8, 1,
                                 seed=0, data_dir=str(tmp_path)))

  # No network: tfds' download fails (here at once; offline machines can
  # take minutes of retries to get there) and the error says what to do.
  def offline(self, *args, **kwargs):
    raise ConnectionError("no route to host")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      offline)
  with pytest.raises(data.DataError,
                     match=r"needs the network on first use.*tfds build"):
    next(tfds_input.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                                 data_dir=str(tmp_path)))

  # A package missing to prepare it: named, and the network not blamed.
  def no_package(self, *args, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'",
                              name="importlib_resources")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      no_package)
  with pytest.raises(data.DataError,
                     match=r"package 'importlib_resources'.*pip install "
                     r"importlib_resources") as e:
    next(tfds_input.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                                 data_dir=str(tmp_path)))
  assert "network" not in str(e.value)


@functools.lru_cache(maxsize=None)
def test_an_unreachable_download_fails_at_once_and_leaves_nothing(tmp_path):
  # Without the network: one line within 30 s naming the URL (tfds alone
  # retries for minutes), and the partial download and dataset folders it
  # made are removed. What was in data_dir before stays, and so does what
  # another process prepared into it meanwhile: another dataset and its
  # download, and this very dataset, finished.
  url = register_unreachable_images()
  (tmp_path / "keep").mkdir()
  (tmp_path / "keep" / "a.txt").write_text("x")
  theirs = [tmp_path / "other_images" / "1.0.0" / "dataset_info.json",
            tmp_path / "downloads" / "other_images" / "images.npz",
            # the same dataset, prepared by another process that could
            # download it
            tmp_path / "ddpm_jax_unreachable" / "1.0.0" / "dataset_info.json"]

  def another_preparation():
    for path in theirs:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("theirs")

  tfds_fakes.MEANWHILE.append(another_preparation)
  began = time.time()
  try:
    with pytest.raises(data.DataError) as e:
      tfds_input.prepared_builder("ddpm_jax_unreachable", str(tmp_path))
  finally:
    tfds_fakes.MEANWHILE.remove(another_preparation)
  assert time.time() - began < 30
  line = str(e.value)
  assert "\n" not in line and line.startswith(
      "tfds dataset 'ddpm_jax_unreachable' is not in "), line
  assert f"could not be downloaded: {url} cannot be reached (" in line, line
  assert "tfds build ddpm_jax_unreachable --data_dir DIR" in line, line
  assert sorted(os.listdir(tmp_path)) == [
      "ddpm_jax_unreachable", "downloads", "keep", "other_images"]
  assert os.listdir(tmp_path / "ddpm_jax_unreachable") == ["1.0.0"]
  assert os.listdir(tmp_path / "ddpm_jax_unreachable" / "1.0.0") == [
      "dataset_info.json"]
  assert os.listdir(tmp_path / "keep") == ["a.txt"]
  assert os.listdir(tmp_path / "downloads") == ["other_images"]
  assert all(path.read_text() == "theirs" for path in theirs)
  # A data_dir the preparation made is removed with what it made.
  with pytest.raises(data.DataError):
    tfds_input.prepared_builder("ddpm_jax_unreachable",
                                str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_a_damaged_record_file_is_named(tmp_path):
  prepare_cifar10_stand_in(tmp_path)
  (shard,) = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path)
              for f in fs if "tfrecord" in f]
  raw = bytearray(open(shard, "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(raw))
  with pytest.raises(data.DataError, match=r"cifar10-train.tfrecord.* is "
                     r"damaged at record \d+.*prepare the dataset again"):
    list(tfds_input.eval_images("cifar10", "train", 16, 32, 3,
                                str(tmp_path)))


@pytest.mark.slow
def test_train_path_on_a_prepared_cifar10(tmp_path):
  from ddpm_jax.run import train_loop
  prepare_cifar10_stand_in(tmp_path / "tfds")
  config = tiny_train_config("cifar10", 3)
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.random_flip = True
  wd = str(tmp_path / "run")
  state = train_loop.train_and_evaluate(config, wd)
  assert int(state.step) == 2
  assert os.path.isfile(os.path.join(wd, "samples", "step_00000002.png"))
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["2"]
