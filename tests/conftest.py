"""Test settings: exact float32 matmuls, a persistent compile cache, and
pytest markers. Parity tests compare at highest matmul precision."""

import gc
import os

import pytest

# tests/scripts/suite_profile.py: compiles recorded per test.
if os.environ.get("DDPM_JAX_SUITE_PROFILE"):
  pytest_plugins = ["tests.scripts.suite_profile"]

# Subprocesses (train.py / sample.py runs) share the compile cache.
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "jax_cache"))
# Every program, however quick to compile: the processes the tests start
# each compile the same small programs (initialisers, checkpoint digests,
# the samplers' pieces), which the cache then answers from the second on.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Every Python process the tests start loads tests/site/sitecustomize.py,
# which lets each process of a multi-process job write the compile cache
# (JAX writes it from process 0 alone).
_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
if _SITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
  os.environ["PYTHONPATH"] = os.pathsep.join(
      filter(None, [_SITE, os.environ.get("PYTHONPATH")]))
os.environ.setdefault("DDPM_JAX_CACHE_EVERY_PROCESS", "1")
# ... and compiles a multi-process job's programs once, in its first
# process, which hands each to the others (they share this machine's
# cores: each compiled every program at once).
os.environ.setdefault("DDPM_JAX_SHARE_PROGRAMS", "1")
# The cyclic garbage collector runs less often, here and (through
# sitecustomize.py) in every process the tests start: with Python's
# default thresholds (700, 10, 10) it took about a tenth of the CPU time of
# a test worker (which holds JAX, PyTorch and TensorFlow's objects) and of
# a tiny train.py run, mostly in full collections over the objects the
# imports made (docs/testing.md). It changes when unreachable cycles are
# freed, not what a test computes.
GC_THRESHOLDS = "100000,50,100"
os.environ.setdefault("DDPM_JAX_GC_THRESHOLDS", GC_THRESHOLDS)
gc.set_threshold(*(int(v) for v in
                   os.environ["DDPM_JAX_GC_THRESHOLDS"].split(",")))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The entry points split the CPU into one JAX device per core
# (ddpm_jax.parallel.use_cpu_cores). The tests' train.py / sample.py runs
# keep one device unless a test sets XLA_FLAGS itself, so that they run the
# same programs whatever the machine's core count; tests/test_parallel.py
# checks the per-core rule.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS",
                                                                ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=1"
                             ).strip()
# Programs compiled at XLA's CPU level 0 (tests/processes.py: OPT_FLAG),
# here and in every process the tests start, unless XLA_FLAGS already picks
# a level.
from tests import processes  # pylint: disable=g-import-not-at-top,wrong-import-position

if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] = f"{processes.OPT_FLAG} {os.environ['XLA_FLAGS']}"
# The digits judge (ddpm_jax.evaluators.digits_judge) is cached beside it.
os.environ.setdefault(
    "DDPM_JAX_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "ddpm_jax"))

# The bucket tests' GCS server (tests/gcs_emulator.py). The clients read
# these variables when they are imported (gcsfs, etils.epath), so they are
# set for the whole session before anything loads them; they affect gs://
# paths only. The server itself starts on this port when a test asks for
# it (tests/test_bucket.py).
from tests import gcs_emulator  # pylint: disable=g-import-not-at-top,wrong-import-position

GCS_URL = gcs_emulator.reserve_url()
os.environ.update(gcs_emulator.client_env(GCS_URL))

# Import the PyTorch references before anything loads TensorFlow (tfds
# tests): importing torch's triton after TensorFlow segfaults.
for _name in ("torch", "diffusers", "denoising_diffusion_pytorch"):
  try:
    __import__(_name)
  except ImportError:
    pass

# Exact float32 matmuls here and in every train.py / sample.py the tests
# start: on the CPU they compute as the default does, but the setting is
# part of each compiled program, so with it the entry points' programs are
# the in-process tests' programs and come from the compile cache.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def torch():
  """The torch module (a test-only reference), float32 and deterministic."""
  torch = pytest.importorskip("torch")
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  torch.use_deterministic_algorithms(True)
  return torch


# The longest test files first: with pytest-xdist's per-file distribution
# (pyproject addopts) the workers then finish together instead of one
# running a long file alone at the end. test_conv and test_unet lead: they
# are the longest files of the fast tier (-m "not slow"), where the others
# here are short. Then the whole suite's, by their time on 2 CPU cores
# (tests/scripts/suite_profile.py, docs/testing.md); the files not listed
# follow in collection order.
_LONG_FILES = ("test_conv", "test_unet",
               "test_bucket", "test_guidance_quality", "test_parallel",
               "test_objectives", "test_multihost", "test_train_cli",
               "test_docs_run", "test_benchmarks", "test_inception",
               "test_classifier_guidance", "test_precision",
               "test_kill_resume", "test_steps_per_call", "test_golden",
               "test_microbatch", "test_guidance", "test_interop_diffusers",
               "test_quality_parity", "test_checkpoint_checks",
               "test_storage_faults", "test_digits_classifier",
               "test_faults", "test_self_conditioning", "test_digits_score",
               "test_docs_commands", "test_sampler")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.stem if hasattr(item, "path") else ""
    return (_LONG_FILES.index(name) if name in _LONG_FILES
            else len(_LONG_FILES))
  items.sort(key=rank)  # stable: the order within a file is kept


@pytest.fixture(scope="session")
def prepared_tfds(tmp_path_factory):
  """A data_dir with 'ddpm_jax_tiny_images' prepared in it
  (tests/tfds_fakes.py)."""
  pytest.importorskip("tensorflow")
  from tests import tfds_fakes  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("tfds")
  tfds_fakes.prepare_tiny_images(d)
  return str(d)
