"""The FID reference statistics of the digits test split, computed by one
process or shared by the processes of a multi-host job (run as
``python -m tests.scripts.shared_statistics --out F.npz [--multihost ...]``).

The Inception network is replaced by the images' flattened pixels as
"features" (float32 values, as the network's are): what is tested is how
the rows are split, gathered and cached, not the network (test_inception
holds that to pytorch-fid). Process i (of a job, or the only one) writes ``OUT_DIR/process_i.npz`` and
keeps its own cache in ``OUT_DIR/cache_i``;
``dataset_statistics`` is called twice, the second time from the cache.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

from ddpm_jax.evaluators import fid
from ddpm_jax.run import multihost_flags
from tests.tiny_configs import tiny_digits_config

FLAGS = flags.FLAGS
multihost_flags.define_multihost_flags()
flags.DEFINE_string("out_dir", None, "Where each process writes its mu and "
                    "sigma, and keeps its cache.")


def pixels(params, images, batch_size=200, mesh=None):
  del params, batch_size, mesh
  x = np.asarray(images, np.float32).reshape(len(images), -1)
  return x.astype(np.float64), np.zeros((len(x), 4))


def main(argv):
  del argv
  multihost_flags.start_multihost()
  import jax  # pylint: disable=g-import-not-at-top
  index = jax.process_index()
  cache = os.path.join(FLAGS.out_dir, f"cache_{index}")
  fid.inception_outputs = pixels
  config = tiny_digits_config(num_timesteps=10, batch_size=8)
  mu, sigma = fid.dataset_statistics(config, "test", None, batch_size=100,
                                     cache_dir=cache)
  print("first call done", file=sys.stderr)
  again = fid.dataset_statistics(config, "test", None, batch_size=100,
                                 cache_dir=cache)
  np.savez(os.path.join(FLAGS.out_dir, f"process_{index}.npz"), mu=mu, sigma=sigma, mu_again=again[0],
           sigma_again=again[1])


if __name__ == "__main__":
  app.run(main)
