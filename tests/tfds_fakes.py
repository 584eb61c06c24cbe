"""tfds datasets prepared on disk from generated examples, offline: the
input pipeline reads their record files as it reads any prepared
dataset's. Needs TensorFlow (the test extra) to prepare them."""

import socket

import numpy as np


def _image_features(builder, shape):
  """The DatasetInfo of a builder whose examples are one image of ``shape``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.DatasetInfo(builder=builder, features=tfds.features
                               .FeaturesDict({"image": tfds.features.Image(
                                   shape=shape)}))


def prepare_tiny_images(data_dir, num_shards=None):
  """'ddpm_jax_tiny_images' in ``data_dir``: 20 RGB 12x10 images, image i
  filled with the value 10 i, one 'train' split (in ``num_shards`` record
  files, default as tfds chooses: one)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class DdpmJaxTinyImages(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return _image_features(self, (10, 12, 3))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(20):
        yield i, {"image": np.full((10, 12, 3), 10 * i, np.uint8)}

  config = (None if num_shards is None else
            tfds.download.DownloadConfig(num_shards=num_shards))
  DdpmJaxTinyImages(data_dir=str(data_dir)).download_and_prepare(
      download_config=config)


# Called by 'ddpm_jax_unreachable' just before its download (what another
# process does meanwhile); see register_unreachable_images.
MEANWHILE = []
_UNREACHABLE_URL = []


def register_unreachable_images():
  """Registers 'ddpm_jax_unreachable' (once per process), a tfds dataset
  whose one file is downloaded from a local port where nothing listens,
  after calling each function in :data:`MEANWHILE`; returns that URL."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if _UNREACHABLE_URL:
    return _UNREACHABLE_URL[0]
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/images.npz"

  class DdpmJaxUnreachable(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return _image_features(self, (8, 8, 3))

    def _split_generators(self, dl_manager):
      for function in MEANWHILE:
        function()
      path = dl_manager.download(url)
      return {"train": self._generate_examples(path)}

    def _generate_examples(self, path):
      for i, image in enumerate(np.load(path)["images"]):
        yield i, {"image": image}

  del DdpmJaxUnreachable  # (registered by name)
  _UNREACHABLE_URL.append(url)
  return url


def prepare_cifar10_stand_in(data_dir, n=16):
  """A stand-in for CIFAR-10 prepared in ``data_dir`` (as `tfds build
  cifar10` would): the real builder's name, version and features, ``n``
  random images (image i with label i % 10); the images, (n, 32, 32, 3)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3),
                                             dtype=np.uint8)

  class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.builder_cls("cifar10").VERSION

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features
                                   .FeaturesDict({
                                       "id": tfds.features.Text(),
                                       "image": tfds.features.Image(
                                           shape=(32, 32, 3)),
                                       "label": tfds.features.ClassLabel(
                                           num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(n):
        yield i, {"id": f"{i}", "label": i % 10, "image": images[i]}

  Cifar10(data_dir=str(data_dir)).download_and_prepare()
  return images


def tiny_images_stream(data_dir, index, count, position=None, n=6,
                       random_flip=False):
  """(batches, positions): the first ``n`` of process ``index`` of
  ``count`` reading 'ddpm_jax_tiny_images' in batches of 4 (global) at
  8x8, seed 7."""
  from ddpm_jax import data, tfds_input  # pylint: disable=g-import-not-at-top
  it = tfds_input.tfds_batches(
      "ddpm_jax_tiny_images", "train", batch_size=4, image_size=8,
      channels=3, seed=7, position=position or data.Position(),
      random_flip=random_flip, data_dir=data_dir, process_index=index,
      process_count=count)
  pairs = [next(it) for _ in range(n)]
  return [b for b, _ in pairs], [p for _, p in pairs]


def tiny_image_ids(batch):
  """Which images of 'ddpm_jax_tiny_images' a batch holds (image i is
  constant 10 i, scaled to [-1, 1])."""
  return [int(round((img[0, 0, 0] + 1) * 127.5 / 10)) for img in batch]
