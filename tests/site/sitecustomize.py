"""Loaded by every Python process the test suite starts (train.py,
sample.py, the multihost workers...): tests/conftest.py puts this folder
on PYTHONPATH. Right after the process imports jax (jax is not imported
here, so the entry points still set their flags first) it

- lets every process of a multi-process job write the persistent compile
  cache ($DDPM_JAX_CACHE_EVERY_PROCESS, set by tests/conftest.py). JAX
  writes it from process 0 alone, so a 2-process test job's process 1
  compiled the programs of its own devices again at each start (those
  spanning the processes are shared, below). Only the tests do this (a local
  cache folder, entries under distinct keys); the entry points keep
  JAX's rule, which spares a shared bucket the writes of every host;
- compiles a program of a multi-process job once, in the job's first
  process, which hands the executable to the others through the job's
  key-value store (JAX's ``jax_share_binary_between_hosts``), when
  $DDPM_JAX_SHARE_PROGRAMS is set (tests/conftest.py). Its cache key must then be the same in every process: on the
  CPU JAX hashes each process's own view of the devices' topology into
  it, so here the devices of a program that spans processes are hashed
  by kind, id, process and the machine's CPU features instead. The
  processes of a test job share the machine's two cores: each compiled
  every program of the job at once, twice the CPU for the same program.
  Single-process programs keep JAX's key;
- records every compile and persistent-cache hit under the test that
  started the process, when tests/scripts/suite_profile.py profiles the
  suite ($DDPM_JAX_SUITE_PROFILE);
- sets the cyclic garbage collector's thresholds the suite runs with
  ($DDPM_JAX_GC_THRESHOLDS, set by tests/conftest.py), at once.

A failure of any part is a warning, never a failed import of jax. While this
folder is on PYTHONPATH it shadows any other sitecustomize module."""

import importlib.abc
import importlib.machinery
import os
import sys

EVERY_PROCESS_ENV = "DDPM_JAX_CACHE_EVERY_PROCESS"
PROFILE_ENV = "DDPM_JAX_SUITE_PROFILE"
GC_ENV = "DDPM_JAX_GC_THRESHOLDS"
SHARE_ENV = "DDPM_JAX_SHARE_PROGRAMS"
# Recorded when a process receives a compiled program from another.
RECEIVED_EVENT = "/ddpm_jax/tests/program_received"


def _warn(what, error):
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.warn(f"tests/site/sitecustomize.py: {what}: {error!r}")


def _on(name):
  """Whether the environment variable ``name`` turns a part on."""
  return os.environ.get(name, "") not in ("", "0")


def _install():
  """Installs the parts the environment asks for (once jax is loaded)."""
  if _on(EVERY_PROCESS_ENV):
    try:
      _write_cache_from_every_process()
    except Exception as e:  # pylint: disable=broad-except
      _warn("the compile cache is written by process 0 alone", e)
  if _on(SHARE_ENV):
    try:
      _share_programs_between_processes()
    except Exception as e:  # pylint: disable=broad-except
      _warn("each process of a job compiles its programs", e)
  if _on(PROFILE_ENV):
    try:
      _register_profile()
    except Exception as e:  # pylint: disable=broad-except
      _warn("compiles not recorded here", e)


def _write_cache_from_every_process():
  """Wraps jax._src.compiler._cache_write: a process other than 0 writes
  its entry as process 0 would (the same host-callback and minimum
  compile-time rules, errors raised where JAX would raise them); process
  0 goes through JAX's own function. Not installed (a warning) where JAX's
  function is not the one this mirrors."""
  import inspect  # pylint: disable=g-import-not-at-top
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src import config  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  original = compiler._cache_write  # pylint: disable=protected-access
  should_raise = getattr(compiler, "_should_raise_persistent_cache_error")
  expected = ["cache_key", "compile_time_secs", "module_name", "backend",
              "executable", "host_callbacks"]
  if list(inspect.signature(original).parameters) != expected:
    raise RuntimeError(f"jax's _cache_write takes "
                       f"{list(inspect.signature(original).parameters)}, "
                       f"not {expected}")

  def cache_write(cache_key, compile_time_secs, module_name, backend,
                  executable, host_callbacks):
    if distributed.global_state.process_id == 0:
      return original(cache_key, compile_time_secs, module_name, backend,
                      executable, host_callbacks)
    if host_callbacks or (
        compile_time_secs
        < config.persistent_cache_min_compile_time_secs.value):
      return None
    try:
      compilation_cache.put_executable_and_time(
          cache_key, module_name, executable, backend,
          int(compile_time_secs))
    except Exception as e:  # pylint: disable=broad-except
      if should_raise(e):
        raise
      _warn(f"cache entry of {module_name} not written", e)
    return None

  compiler._cache_write = cache_write  # pylint: disable=protected-access


def _share_programs_between_processes():
  """Turns JAX's sharing of compiled programs between the processes of a
  job on, with process-independent cache keys for the CPU programs that
  span processes (the docstring above). Not installed (a warning) where
  JAX's key function is not the one this wraps."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import cache_key  # pylint: disable=g-import-not-at-top
  original = cache_key._hash_accelerator_config  # pylint: disable=protected-access
  if list(inspect.signature(original).parameters) != ["hash_obj",
                                                      "accelerators"]:
    raise RuntimeError(f"jax's _hash_accelerator_config takes "
                       f"{list(inspect.signature(original).parameters)}")
  features = hashlib.sha256(_cpu_features().encode()).hexdigest()

  def hash_accelerator_config(hash_obj, accelerators):
    devices = list(accelerators.flat)
    if (len({d.process_index for d in devices}) < 2
        or any(d.platform != "cpu" for d in devices)):
      return original(hash_obj, accelerators)
    hash_obj.update(features.encode())
    for d in devices:
      hash_obj.update(f"{d.device_kind}/{d.id}/{d.process_index};".encode())
    return None

  from jax import monitoring  # pylint: disable=g-import-not-at-top
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  share = compiler._compile_and_share_module  # pylint: disable=protected-access
  signature = inspect.signature(share)
  if "first_process_id" not in signature.parameters:
    raise RuntimeError("jax's _compile_and_share_module takes "
                       f"{list(signature.parameters)}")

  def compile_or_receive(*args, **kwargs):
    first = signature.bind(*args, **kwargs).arguments["first_process_id"]
    if distributed.global_state.process_id != first:
      # A program this process receives rather than compiles, for the
      # suite's profile (tests/scripts/suite_profile.py).
      monitoring.record_event(RECEIVED_EVENT)
    return share(*args, **kwargs)

  # JAX keeps the programs it shared on its function (the same dict).
  compile_or_receive.__dict__.update(share.__dict__)
  compiler._compile_and_share_module = compile_or_receive  # pylint: disable=protected-access
  cache_key._hash_accelerator_config = hash_accelerator_config  # pylint: disable=protected-access
  jax.config.update("jax_share_binary_between_hosts", True)
  # A job whose first process is gone fails its wait within this, not
  # JAX's 20 minutes.
  jax.config.update("jax_share_binary_between_hosts_timeout_ms", 180_000)


def _cpu_features():
  """The machine's CPU model and instruction-set flags (a compiled CPU
  program is only valid where they are the same)."""
  import platform  # pylint: disable=g-import-not-at-top
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [l for l in f if l.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return f"{platform.machine()} {platform.processor()}"


def _register_profile():
  """Records this process's compiles (tests/scripts/suite_profile.py)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                      "scripts", "suite_profile.py")
  spec = importlib.util.spec_from_file_location("_suite_profile", path)
  suite_profile = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(suite_profile)
  suite_profile.register_listeners(
      lambda: os.environ.get("DDPM_JAX_SUITE_PROFILE_TEST", "?"))


class _AfterJax(importlib.abc.MetaPathFinder):
  """Runs :func:`_install` right after the module ``jax`` executes. It
  stays in place until then: a lookup that does not import (e.g.
  importlib.util.find_spec("jax")) does not use it up."""

  def find_spec(self, name, path=None, target=None):
    """The spec of ``jax`` from the other finders, its loader wrapped."""
    if name != "jax":
      return None
    others = [f for f in sys.meta_path if f is not self]
    for finder in others:
      spec = getattr(finder, "find_spec", lambda *a: None)(name, path,
                                                           target)
      if spec is not None:
        break
    else:
      return None
    if spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_then_install(module):
      exec_module(module)
      if self in sys.meta_path:
        sys.meta_path.remove(self)
        _install()

    spec.loader.exec_module = exec_then_install
    return spec


def _set_gc_thresholds(value):
  """``gc.set_threshold`` of the comma-separated integers ``value``."""
  import gc  # pylint: disable=g-import-not-at-top
  try:
    gc.set_threshold(*(int(v) for v in value.split(",")))
  except (TypeError, ValueError) as e:
    _warn(f"${GC_ENV}={value!r} not applied", e)


if os.environ.get(GC_ENV):
  _set_gc_thresholds(os.environ[GC_ENV])
if _on(EVERY_PROCESS_ENV) or _on(SHARE_ENV) or _on(PROFILE_ENV):
  sys.meta_path.insert(0, _AfterJax())
