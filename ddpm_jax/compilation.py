"""How programs are compiled: programs that run once (parameter
initialisation) are compiled for compile speed rather than run speed.

Initialising a U-Net compiles one threefry random-number kernel per
parameter array (75 for the digits model) and nothing else (the forward
pass is dead code); XLA's CPU backend spends several times longer on
that at its default LLVM optimisation level than without the expensive
passes, with bit-identical parameters (tests/test_compilation.py; the
figures are in docs/benchmarks.md, 'Measurements behind design
choices'). Every train.py run and every test that builds a train state
pays it once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

# XLA debug options for a program run once, on the CPU backend.
RUN_ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}


def jit_once(fun: Callable[..., Any], **jit_kwargs) -> Callable[..., Any]:
  """``jax.jit(fun, **jit_kwargs)`` for a function called once: on the CPU
  compiled with ``RUN_ONCE_CPU_OPTIONS`` (same results, less compile
  time); elsewhere plain ``jax.jit``."""
  if jax.default_backend() == "cpu":
    jit_kwargs.setdefault("compiler_options", dict(RUN_ONCE_CPU_OPTIONS))
  return jax.jit(fun, **jit_kwargs)
