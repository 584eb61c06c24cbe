"""A table of functions by name, filled by a decorator: the one registry
the beta schedules and the samplers share (score_sde's register_* style)."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Optional, TypeVar

Fn = TypeVar("Fn", bound=Callable)


class Registry(Generic[Fn]):
  """Functions of one ``kind`` ('beta schedule', 'sampler') by name."""

  def __init__(self, kind: str, hint: str = ""):
    self._kind = kind
    self._hint = hint  # appended to the unknown-name error
    self._fns: Dict[str, Fn] = {}

  def register(self, name: str) -> Callable[[Fn], Fn]:
    """Decorator: registers the function under ``name`` (once)."""

    def wrap(fn: Fn) -> Fn:
      if name in self._fns:
        raise ValueError(f"{self._kind} {name!r} is registered twice")
      self._fns[name] = fn
      return fn

    return wrap

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._fns)

  def find(self, name: str) -> Optional[Fn]:
    """The function registered as ``name``, or None."""
    return self._fns.get(name)

  def get(self, name: str) -> Fn:
    """The function registered as ``name``; a ValueError listing the names
    otherwise."""
    if name not in self._fns:
      raise ValueError(f"unknown {self._kind} {name!r}; choose one of "
                       f"{self.names()}{self._hint}")
    return self._fns[name]
