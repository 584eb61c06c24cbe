"""Test settings: exact float32 matmuls, a persistent compile cache, and
pytest markers. Parity tests compare at highest matmul precision."""

import os

import pytest

# Subprocesses (train.py / sample.py runs) share the compile cache.
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The digits judge (ddpm_jax.digits_classifier) is cached beside it.
os.environ.setdefault(
    "DDPM_JAX_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "ddpm_jax"))

# Import the PyTorch references before anything loads TensorFlow (tfds
# tests): importing torch's triton after TensorFlow segfaults.
for _name in ("torch", "diffusers", "denoising_diffusion_pytorch"):
  try:
    __import__(_name)
  except ImportError:
    pass

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def torch():
  """The torch module (a test-only reference), float32 and deterministic."""
  torch = pytest.importorskip("torch")
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  torch.use_deterministic_algorithms(True)
  return torch
