"""Input pipelines: digits (offline), tfds (mocked), determinism, errors."""

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


def test_tfds_pipeline_on_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    it = data.tfds_batches("mnist", "train", batch_size=4, image_size=8,
                           channels=1, seed=0, random_flip=True)
    batch, position = next(it)
    assert batch.shape == (4, 8, 8, 1) and batch.dtype == np.float32
    assert -1.0 <= batch.min() <= batch.max() <= 1.0
    assert position == data.Position(0, 4)
    with pytest.raises(data.DataError, match="data.channels=1"):
      next(data.tfds_batches("mnist", "train", 4, 8, channels=3, seed=0))
    # Same seed, same order; a resume reads on from the saved position,
    # across the end of an epoch (3 batches of 4 per epoch).
    a = data.tfds_batches("mnist", "train", 4, 8, 1, seed=3)
    seq, pos = take(a, 5)
    assert pos[3] == data.Position(1, 4)
    assert not np.array_equal(seq[0], seq[3])  # epoch 1 reshuffled
    for k in (1, 2, 3):
      b = data.tfds_batches("mnist", "train", 4, 8, 1, seed=3,
                            position=pos[k])
      got, after = next(b)
      np.testing.assert_array_equal(got, seq[k + 1])
      assert after == pos[k + 1]


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
  """A real tfds dataset prepared on disk (20 RGB 12x10 images, image i
  filled with the value 10 i), so that splits, file reads and decoding are
  tfds' own rather than mock_data's."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("importlib_resources")  # tfds' builders need it

  class DdpmJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features
                                   .FeaturesDict({"image": tfds.features.Image(
                                       shape=(10, 12, 3))}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(20):
        yield i, {"image": np.full((10, 12, 3), 10 * i, np.uint8)}

  d = str(tmp_path_factory.mktemp("tfds"))
  DdpmJaxTinyImages(data_dir=d).download_and_prepare()
  return d


def test_tfds_each_process_reads_its_own_part(prepared_tfds):
  def stream(index, count, position=data.Position(), n=6):
    return take(data.tfds_batches(
        "ddpm_jax_tiny_images", "train", batch_size=4, image_size=8,
        channels=3, seed=7, position=position, random_flip=False,
        data_dir=prepared_tfds, process_index=index, process_count=count), n)

  def ids(batch):  # image i is constant 10 i, scaled to [-1, 1]
    return [int(round((img[0, 0, 0] + 1) * 127.5 / 10)) for img in batch]

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
  # Pixel p becomes p / 127.5 - 1 exactly: 0 -> -1, 10 i (constant images
  # stay constant through the area resize) -> 10 i / 127.5 - 1.
  values = np.unique(np.concatenate([x.ravel() for x in one]))
  np.testing.assert_allclose(values, np.arange(20) * 10 / 127.5 - 1.0,
                             rtol=0, atol=1e-6)
  # A resume mid-epoch and at the epoch's end reads what the stream read.
  for k in (1, 4):
    got, _ = stream(1, 2, position=pb[k], n=1)
    np.testing.assert_array_equal(got[0], b[k + 1])


def test_tfds_pixels_map_to_minus_one_and_one():
  # The map every tfds image takes: uint8 0 -> -1.0 and 255 -> +1.0.
  tf = pytest.importorskip("tensorflow")
  img = tf.constant(np.stack([np.zeros((6, 4, 3), np.uint8),
                              np.full((6, 4, 3), 255, np.uint8)]))
  lo, hi = (np.asarray(data._square_resize(img[i], 4)) for i in range(2))
  assert lo.shape == (4, 4, 3)
  np.testing.assert_array_equal(lo, -1.0)
  np.testing.assert_array_equal(hi, 1.0)


def test_tfds_not_prepared_says_what_to_do(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="data.download is False"):
    next(data.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                           data_dir=str(tmp_path), download=False))
  with pytest.raises(data.DataError, match="unknown tfds dataset"):
    next(data.tfds_batches("no_such_dataset_xyz", "train", 4, 8, 1, seed=0,
                           data_dir=str(tmp_path)))

  # No network: tfds' download fails (here at once; offline machines can
  # take minutes of retries to get there) and the error says what to do.
  def offline(self, *args, **kwargs):
    raise ConnectionError("no route to host")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      offline)
  with pytest.raises(data.DataError,
                     match=r"needs the network on first use.*tfds build"):
    next(data.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
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
    next(data.tfds_batches("mnist", "train", 4, 8, 1, seed=0,
                           data_dir=str(tmp_path)))
  assert "network" not in str(e.value)


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
                              num_steps=2, checkpoint_every=2)
  config.data.name = name
  config.data.channels = channels
  return config


def test_train_path_on_tfds_mock_cifar10(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from ddpm_jax.run import train_loop
  config = tiny_train_config("cifar10", 3)
  config.data.random_flip = True
  wd = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=16):
    state = train_loop.train_and_evaluate(config, wd)
  assert int(state.step) == 2
  assert os.path.isfile(os.path.join(wd, "samples", "step_00000002.png"))
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["2"]


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
