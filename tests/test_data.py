"""Input pipelines: digits (offline), tfds (mocked), determinism, errors."""

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


def test_array_batches_resume_exactly_and_cover_each_epoch():
  images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
  it = data.array_batches(images, 3, seed=5)
  first = [next(it) for _ in range(7)]
  resumed = data.array_batches(images, 3, seed=5, start_step=4)
  for i in range(4, 7):
    np.testing.assert_array_equal(next(resumed), first[i])
  epoch0 = np.concatenate(first[:3]).ravel()
  assert len(set(epoch0)) == 9  # 3 batches of a permutation, 1 dropped
  other = data.array_batches(images, 3, seed=6)
  assert not np.array_equal(next(other), first[0])
  with pytest.raises(data.DataError, match="training.batch_size"):
    next(data.array_batches(images, 11, seed=0))


def test_random_flip_mirrors_some_images():
  images = np.tile(np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1),
                   (64, 2, 1, 1))
  batch = next(data.array_batches(images, 64, seed=0, random_flip=True))
  flipped = (batch[:, 0, 0, 0] == 3).sum()
  assert 10 < flipped < 54
  assert set(batch[:, 0, 0, 0]) == {0.0, 3.0}


def test_create_input_iter_digits():
  config = digits_config.get_config()
  config.training.batch_size = 16
  batch = next(data.create_input_iter(config))
  assert batch.shape == (16, 8, 8, 1)


def test_tfds_pipeline_on_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    it = data.tfds_batches("mnist", "train", batch_size=4, image_size=8,
                           channels=1, seed=0, random_flip=True)
    batch = next(it)
    assert batch.shape == (4, 8, 8, 1) and batch.dtype == np.float32
    assert -1.0 <= batch.min() <= batch.max() <= 1.0
    with pytest.raises(data.DataError, match="data.channels=1"):
      next(data.tfds_batches("mnist", "train", 4, 8, channels=3, seed=0))
    # Same seed, same order; resume skips the batches already seen.
    a = data.tfds_batches("mnist", "train", 4, 8, 1, seed=3)
    seq = [next(a) for _ in range(3)]
    b = data.tfds_batches("mnist", "train", 4, 8, 1, seed=3, start_step=2)
    np.testing.assert_array_equal(next(b), seq[2])


def test_tfds_without_data_or_network_says_so(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="needs the network on first use"):
    next(data.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                           data_dir=str(tmp_path)))
  with pytest.raises(data.DataError, match="unknown tfds dataset"):
    next(data.tfds_batches("no_such_dataset_xyz", "train", 4, 8, 1, seed=0,
                           data_dir=str(tmp_path)))
