"""What the speed benchmarks share: the benchmark configs by name, the
PyTorch reference models built from the same config, alternating timing
and a record of the machine and library versions.

Every figure is a median over alternating runs (JAX, then PyTorch, then
JAX ...), so that a change in the machine's load during the benchmark
falls on both sides; first calls (JAX compilation, PyTorch warm-up) are
timed apart and never enter the medians.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections

CONFIG_NAMES = ("tiny8", "tiny32", "cifar10", "smoke")


def get_config(name: str) -> ml_collections.ConfigDict:
  """'tiny8': the offline default (configs/digits.py: 8x8x1, ch 32, two
  levels, attention at 4x4); 'tiny32': a 32x32x3 U-Net of the CIFAR-10
  shape at ch 32 (levels 1,2,2, one block per level, attention at 16x16);
  'cifar10': the paper's 35.7M CIFAR-10 model (configs/cifar10.py);
  'smoke': a one-level 8x8 U-Net that only checks that the scripts run
  (tests/test_benchmarks.py), too small to time anything."""
  from configs import cifar10, digits
  if name == "tiny8":
    return digits.get_config()
  if name == "tiny32":
    config = cifar10.get_config()
    config.model.ch = 32
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (16,)
    return config
  if name == "cifar10":
    return cifar10.get_config()
  if name == "smoke":
    config = digits.get_config()
    config.model.ch_mult = (1,)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = ()
    return config
  raise ValueError(f"--config must be one of {CONFIG_NAMES}, got {name!r}")


def define_config_flags() -> None:
  """--config, --bf16 and --set, which every benchmark script takes."""
  from absl import flags
  flags.DEFINE_enum("config", "tiny8", list(CONFIG_NAMES),
                    "The benchmark config (see benchmarks/common.py).")
  flags.DEFINE_bool("bf16", False, "bfloat16 compute: the JAX U-Net with "
                    "model.dtype=bfloat16 (float32 parameters and norms), "
                    "PyTorch under torch.autocast(bfloat16).")
  flags.DEFINE_multi_string("set", [], "A config field FIELD=VALUE (e.g. "
                            "model.attention_impl=cudnn), repeatable: the "
                            "A/B candidates of docs/benchmarks.md.")


def set_fields(config: ml_collections.ConfigDict, assignments) -> None:
  """Applies ``FIELD=VALUE`` strings to ``config``: VALUE is read as a
  Python literal where it is one (8, 1e-3, (1, 2), True), else as a
  string; an unknown field or a value of the wrong type exits with one
  line."""
  import ast
  for item in assignments:
    field, sep, text = item.partition("=")
    *parents, name = field.split(".")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    try:
      if not sep:
        raise KeyError(field)
      for part in parents:
        node = node[part]
      if name not in node:
        raise KeyError(field)
      node[name] = value
    except (KeyError, TypeError) as e:
      sys.exit(f"error: --set {item!r}: {e}; give FIELD=VALUE with a field "
               f"of the config (configs/default.py)")


def define_shared_flags() -> None:
  """The flags both timing scripts take: --config, --bf16
  (:func:`define_config_flags`), --repeats, --torch_mode, --torch_device,
  --jax_only."""
  from absl import flags
  define_config_flags()
  flags.DEFINE_integer("repeats", 5, "Alternating timed runs per side.")
  flags.DEFINE_enum("torch_mode", "eager", ["eager", "compile"],
                    "PyTorch eager, or the U-Net under torch.compile.")
  flags.DEFINE_string("torch_device", "auto", "cpu, cuda or auto.")
  flags.DEFINE_bool("jax_only", False, "Time the JAX side alone (the "
                    "scaling check, with JAX_NUM_CPU_DEVICES=1 and =8; "
                    "a GPU goal that has no PyTorch counterpart).")


def config_from_flags() -> ml_collections.ConfigDict:
  """The config --config names, in bfloat16 compute with --bf16, with the
  fields of --set. JAX's CPU backend gets one device per core first, as in
  the entry points (``ddpm_jax.parallel.use_cpu_cores``;
  JAX_NUM_CPU_DEVICES=1 for one)."""
  from absl import flags
  from ddpm_jax import parallel
  parallel.use_cpu_cores()
  config = get_config(flags.FLAGS.config)
  if flags.FLAGS.bf16:
    config.model.dtype = "bfloat16"
  set_fields(config, flags.FLAGS.set)
  return config


def require_reference():
  """The torch module, with diffusers importable (the test extra), or an
  exit with one line saying what to install."""
  try:
    import diffusers  # pylint: disable=unused-import
    import torch
  except ImportError as e:
    sys.exit(f"error: the PyTorch reference side needs {e.name!r}: pip "
             f"install -e '.[test]', or pass --jax_only")
  return torch


def setup_from_flags():
  """(config, torch device) from the shared flags: :func:`config_from_flags`,
  and --torch_device auto -> cuda if present (None with --jax_only, which
  needs no PyTorch)."""
  from absl import flags
  config = config_from_flags()
  if flags.FLAGS.jax_only:
    return config, None
  torch = require_reference()
  device = flags.FLAGS.torch_device
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  return config, device


def torch_unet(config: ml_collections.ConfigDict):
  """diffusers' UNet2DModel with the architecture of ``config.model`` (the
  same mapping the exporter uses), fp32, train mode."""
  from diffusers import UNet2DModel
  from ddpm_jax.interop import diffusers_unet
  cfg = diffusers_unet.diffusers_config_from_model(
      config.model, config.data.image_size, config.data.channels)
  cfg.pop("_class_name")
  return UNet2DModel(**cfg)


def torch_scheduler(config: ml_collections.ConfigDict):
  """diffusers' DDPMScheduler with the config's linear schedule."""
  from diffusers import DDPMScheduler
  d = config.diffusion
  if d.schedule != "linear":
    raise ValueError("the benchmarks compare the linear schedule")
  return DDPMScheduler(num_train_timesteps=int(d.num_timesteps),
                       beta_start=float(d.beta_start),
                       beta_end=float(d.beta_end), beta_schedule="linear",
                       variance_type="fixed_small", clip_sample=True)


def say(message: str) -> None:
  """A progress line on stderr (stdout holds the JSON results)."""
  print(message, file=sys.stderr, flush=True)


def alternate(runs: Dict[str, Callable[[], float]], repeats: int
              ) -> Dict[str, List[float]]:
  """Calls each of ``runs`` (returning seconds) in turn, ``repeats`` times,
  with a line per run on stderr; returns every name's times."""
  times = {name: [] for name in runs}
  for k in range(repeats):
    for name, fn in runs.items():
      times[name].append(fn())
      say(f"{name} run {k + 1}/{repeats}: {times[name][-1]:.3f} s")
  return times


def median(xs: List[float]) -> float:
  return float(statistics.median(xs))


def timed(fn: Callable[[], object]) -> float:
  """Seconds that ``fn()`` takes (it must block until its work is done)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def jax_environment() -> Dict[str, str]:
  """Date, machine, JAX's devices, the JAX libraries' versions and
  XLA_FLAGS where set."""
  import flax
  import jax
  import optax
  devices = jax.devices()
  env = {
      "date": datetime.date.today().isoformat(),
      "machine": f"{platform.machine()} {platform.processor() or ''} "
                 f"{os.cpu_count()} cores".replace("  ", " "),
      "jax_devices": f"{len(devices)} x {devices[0].device_kind}",
      "versions": f"python {platform.python_version()}, jax "
                  f"{jax.__version__}, flax {flax.__version__}, optax "
                  f"{optax.__version__}",
  }
  if os.environ.get("XLA_FLAGS", "").strip():
    env["xla_flags"] = os.environ["XLA_FLAGS"].strip()
  return env


def environment(with_torch: bool = True) -> Dict[str, str]:
  """:func:`jax_environment` with PyTorch's device and the PyTorch
  libraries' versions (unless not ``with_torch``), for
  docs/benchmarks.md."""
  env = jax_environment()
  if not with_torch:
    return env
  import diffusers
  import torch
  versions = env.pop("versions")
  env["torch_device"] = ("cuda: " + torch.cuda.get_device_name(0)
                         if torch.cuda.is_available() else
                         f"cpu ({torch.get_num_threads()} threads)")
  env["versions"] = (f"{versions}, torch {torch.__version__}, "
                     f"diffusers {diffusers.__version__}")
  return env
