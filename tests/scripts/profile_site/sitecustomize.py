"""Loaded by every Python process the profiled suite starts (train.py,
sample.py, the multihost workers...) when tests/scripts/suite_profile.py
puts this folder on PYTHONPATH: once the process imports jax, its compiles
and persistent-cache hits are appended to $DDPM_JAX_SUITE_PROFILE under the
test that started the process ($DDPM_JAX_SUITE_PROFILE_TEST). jax itself is
not imported here, so the entry points still set their flags first. While
this folder is on PYTHONPATH it shadows any other sitecustomize module."""

import importlib.abc
import importlib.machinery
import os
import sys


def _install():
  """Registers the listeners; a failure is a warning, not a failed import
  of jax."""
  try:
    _register()
  except Exception as e:  # pylint: disable=broad-except
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn(f"suite_profile: compiles not recorded here: {e}")


def _register():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "suite_profile.py")
  spec = importlib.util.spec_from_file_location("_suite_profile", path)
  suite_profile = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(suite_profile)
  suite_profile.register_listeners(
      lambda: os.environ.get("DDPM_JAX_SUITE_PROFILE_TEST", "?"))


class _AfterJax(importlib.abc.MetaPathFinder):
  """Registers the listeners right after the module ``jax`` executes."""

  def find_spec(self, name, path=None, target=None):
    if name != "jax":
      return None
    sys.meta_path.remove(self)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_then_install(module):
      exec_module(module)
      _install()

    spec.loader.exec_module = exec_then_install
    return spec


if os.environ.get("DDPM_JAX_SUITE_PROFILE"):
  sys.meta_path.insert(0, _AfterJax())
