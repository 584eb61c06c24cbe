"""Input pipelines: digits (offline), image folders, determinism, errors
(tfds datasets: test_tfds_input.py)."""

import os

import numpy as np
import pytest

from configs import digits as digits_config
from ddpm_jax import data


def test_digits_real_data_scaled_and_split():
  train = data.digits_images("train")
  test = data.digits_images("test")
  assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
  assert train.dtype == np.float32
  assert train.min() == -1.0 and train.max() == 1.0
  # The split is a fixed partition of the 1,797 images.
  both = np.concatenate([train, test]).reshape(1797, -1)
  assert len(np.unique(both, axis=0)) == len(
      np.unique(data.digits_images("all").reshape(1797, -1), axis=0))
  big = data.digits_images("train", image_size=16)
  assert big.shape == (1500, 16, 16, 1) and -1 <= big.min() < big.max() <= 1
  with pytest.raises(data.DataError, match="data.split"):
    data.digits_images("validation")


def test_eval_batches_are_counted_before_they_are_read():
  # (bits/dim's bar has a total)
  from tests.tiny_configs import tiny_config
  config = tiny_config()
  batches = data.eval_batches(config, "test", 100)
  assert len(batches) == 3
  assert [len(b) for b in batches] == [100, 100, 97]
  batches = data.eval_batches(config, "test", 6, limit=10)
  assert len(batches) == 2 and [len(b) for b in batches] == [6, 4]


def take(it, n):
  """n (batch, position) pairs -> (batches, positions)."""
  pairs = [next(it) for _ in range(n)]
  return [b for b, _ in pairs], [p for _, p in pairs]


def test_array_batches_resume_exactly_and_cover_each_epoch():
  images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
  first, pos = take(data.array_batches(images, 3, seed=5), 7)
  assert pos[2] == data.Position(0, 9) and pos[3] == data.Position(1, 3)
  resumed = data.array_batches(images, 3, seed=5, position=pos[3])
  for i in range(4, 7):
    batch, after = next(resumed)
    np.testing.assert_array_equal(batch, first[i])
    assert after == pos[i]
  epoch0 = np.concatenate(first[:3]).ravel()
  assert len(set(epoch0)) == 9  # 3 batches of a permutation, 1 dropped
  other, _ = next(data.array_batches(images, 3, seed=6))
  assert not np.array_equal(other, first[0])
  with pytest.raises(data.DataError, match="training.batch_size"):
    next(data.array_batches(images, 11, seed=0))


def test_array_batches_resume_with_another_batch_size():
  # The position counts examples, so a run resumed with a new batch size
  # reads on from the same example of the same epoch.
  images = np.arange(24, dtype=np.float32).reshape(24, 1, 1, 1)
  small, pos = take(data.array_batches(images, 2, seed=1), 6)
  big, _ = take(data.array_batches(images, 4, seed=1, position=pos[1]), 2)
  np.testing.assert_array_equal(np.concatenate(big),
                                np.concatenate(small[2:6]))


def test_array_batches_split_over_processes():
  # Each process yields its rows of the same global batch (flips included).
  images = np.random.default_rng(0).normal(size=(20, 2, 3, 1)).astype(
      np.float32)
  whole, pos = take(data.array_batches(images, 8, seed=2, random_flip=True,
                                       process_index=0, process_count=1), 5)
  parts = [take(data.array_batches(images, 8, seed=2, random_flip=True,
                                   process_index=p, process_count=4), 5)
           for p in range(4)]
  for i in range(5):
    np.testing.assert_array_equal(
        np.concatenate([batches[i] for batches, _ in parts]), whole[i])
    assert all(positions[i] == pos[i] for _, positions in parts)
  with pytest.raises(data.DataError, match="divisible by the 3 processes"):
    next(data.array_batches(images, 8, seed=2, process_index=0,
                            process_count=3))


def test_random_flip_mirrors_some_images():
  images = np.tile(np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1),
                   (64, 2, 1, 1))
  batch, _ = next(data.array_batches(images, 64, seed=0, random_flip=True))
  flipped = (batch[:, 0, 0, 0] == 3).sum()
  assert 10 < flipped < 54
  assert set(batch[:, 0, 0, 0]) == {0.0, 3.0}


def test_create_input_iter_digits():
  config = digits_config.get_config()
  config.training.batch_size = 16
  batch, position = next(data.create_input_iter(config))
  assert batch.shape == (16, 8, 8, 1)
  assert position == data.Position(0, 16)
  assert data.Position.from_json(position.to_json()) == position


def write_images(folder, sizes, mode="RGB"):
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, (w, h) in enumerate(sizes):
    bands = len(Image.new(mode, (1, 1)).getbands())
    arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if bands == 1 else arr, mode).save(
        os.path.join(folder, f"img{i}.png"))


def test_image_folder(tmp_path):
  from PIL import Image
  folder = str(tmp_path / "imgs")
  write_images(folder, [(40, 30), (16, 16), (9, 33)])
  os.makedirs(os.path.join(folder, "sub"))
  # A known image: left half black, right half white, 40x20 -> centre crop
  # 20x20 (columns 10..29: black 10..19, white 20..29) -> 5x5 boxes -> 4x4.
  arr = np.zeros((20, 40, 3), np.uint8)
  arr[:, 20:] = 255
  Image.fromarray(arr).save(os.path.join(folder, "sub", "z.png"))
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("not an image")
  x = data.folder_images(folder, image_size=4, channels=3)
  assert x.shape == (4, 4, 4, 3) and x.dtype == np.float32
  assert -1.0 <= x.min() <= x.max() <= 1.0
  known = x[3]  # sorted paths: img0, img1, img2, sub/z
  assert np.all(known[:, :2] == -1.0) and np.all(known[:, 2:] == 1.0)


def test_image_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match="is not a directory"):
    data.folder_images(str(tmp_path / "nope"), 8, 3)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.txt").write_text("x")
  with pytest.raises(data.DataError, match="holds no image files"):
    data.folder_images(str(empty), 8, 3)
  gray = str(tmp_path / "gray")
  write_images(gray, [(8, 8)], mode="L")
  with pytest.raises(data.DataError, match=r"mode L .* data.channels=3"):
    data.folder_images(gray, 8, 3)
  assert data.folder_images(gray, 8, 1).shape == (1, 8, 8, 1)
  rgba = str(tmp_path / "rgba")
  write_images(rgba, [(8, 8)], mode="RGBA")
  with pytest.raises(data.DataError, match="mode RGBA"):
    data.folder_images(rgba, 8, 3)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "bad.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(data.DataError, match="cannot read image .*bad.png"):
    data.folder_images(str(broken), 8, 3)


def tiny_train_config(name, channels):
  from tests.tiny_configs import tiny_digits_config
  config = tiny_digits_config(num_timesteps=10, batch_size=4, num_samples=2,
                              one_level=True, num_steps=2,
                              checkpoint_every=2)
  config.data.name = name
  config.data.channels = channels
  return config


@pytest.mark.slow
def test_train_path_on_an_image_folder(tmp_path):
  from ddpm_jax.run import train_loop
  folder = str(tmp_path / "imgs")
  write_images(folder, [(12, 10)] * 6)
  config = tiny_train_config("folder", 3)
  config.data.folder = folder
  wd = str(tmp_path / "run")
  state = train_loop.train_and_evaluate(config, wd)
  assert int(state.step) == 2
  assert os.path.isfile(os.path.join(wd, "samples", "step_00000002.png"))


def test_digits_are_scikit_learns():
  # data._load_digits reads scikit-learn's file without importing it.
  from sklearn.datasets import load_digits
  digits = load_digits()
  images, labels = data._load_digits()  # pylint: disable=protected-access
  np.testing.assert_array_equal(images, digits.images)
  np.testing.assert_array_equal(labels, digits.target)
  assert images.dtype == np.float64 and images.shape == (1797, 8, 8)


_WRITE_PAST_A_SIZE_LIMIT = """
import resource, signal, sys
from ddpm_jax import paths
path = sys.argv[1]
paths.write_bytes(path, b"old" * 10)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
  paths.write_bytes(path, b"new" * 2000)
except OSError as e:
  print("refused", e.errno, e)
"""


def test_an_interrupted_write_leaves_the_old_file_and_no_part(tmp_path):
  # A write cut short by the file-size limit (as a full disk would): the
  # old file is as it was, and no partial file is left beside it.
  import subprocess
  import sys
  from tests.processes import ROOT
  path = tmp_path / "out.json"
  p = subprocess.run([sys.executable, "-c", _WRITE_PAST_A_SIZE_LIMIT,
                      str(path)], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 0 and "refused 27" in p.stdout, p.stderr[-2000:]
  # One line naming the file and the cause.
  assert f"could not write {path} (File too large (errno 27))" in p.stdout
  assert path.read_bytes() == b"old" * 10
  assert sorted(os.listdir(tmp_path)) == ["out.json"]
