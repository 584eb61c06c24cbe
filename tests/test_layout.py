"""The package's shape: its import graph has no circle, the layers below
training never import the training step or the run drivers, modules stay
small, and no config default is written outside configs/default.py."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ddpm_jax"
MAX_LINES = 450


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _lazy_exports(name: str) -> dict:
  """A package's names loaded on first use (its ``_EXPORTS``: name ->
  submodule), which an import of the name really imports."""
  for node in ast.parse(MODULES[name].read_text()).body:
    if (isinstance(node, ast.Assign) and
        [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]):
      return {k: f"{name}.{v}" for k, v in ast.literal_eval(node.value).items()}
  return {}


def _imports(name: str) -> set:
  """The ddpm_jax modules ``name`` imports anywhere in its source (a
  package's ``__init__`` counts as imported with any of its modules)."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      lazy = _lazy_exports(base) if base in MODULES else {}
      targets = [base] + [lazy.get(a.name, f"{base}.{a.name}")
                          for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in MODULES:
        target = target.rpartition(".")[0]
      # Each enclosing package runs its __init__ too.
      parts = target.split(".")
      for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) in MODULES:
          found.add(".".join(parts[:i]))
  found.discard(name)
  return found


GRAPH = {name: _imports(name) for name in MODULES}


def _reachable(start: str) -> set:
  seen, todo = set(), [start]
  while todo:
    for m in GRAPH[todo.pop()]:
      if m not in seen:
        seen.add(m)
        todo.append(m)
  return seen


def test_the_graph_sees_known_edges():
  # The checks below are only as good as the graph: spot-check it.
  assert "ddpm_jax.samplers.chain" in GRAPH["ddpm_jax.samplers.ddim"]
  assert "ddpm_jax.train.state" in GRAPH["ddpm_jax.interop.sources"]
  assert "ddpm_jax.samplers" in GRAPH["ddpm_jax.samplers.ddim"]
  assert "ddpm_jax.train.step" in _reachable("ddpm_jax.run.train_loop")


def test_no_import_circle():
  circles = sorted(m for m in MODULES if m in _reachable(m) and
                   m != "ddpm_jax")
  assert not circles, f"modules that import themselves through others: " \
                      f"{circles}"


@pytest.mark.parametrize("layer", ["ddpm_jax.samplers", "ddpm_jax.evaluators",
                                   "ddpm_jax.interop", "ddpm_jax.models"])
def test_lower_layers_do_not_import_training_or_drivers(layer):
  upper = ("ddpm_jax.train.step", "ddpm_jax.train.grads", "ddpm_jax.run")
  for name in MODULES:
    if name == layer or name.startswith(layer + "."):
      bad = sorted(m for m in _reachable(name) if m.startswith(upper))
      assert not bad, f"{name} imports {bad}"


def test_modules_are_small():
  big = {name: n for name, p in MODULES.items()
         if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not big, f"split these modules (over {MAX_LINES} lines): {big}"


def test_no_config_default_outside_configs():
  # A config field read with a fallback repeats configs/default.py.
  pattern = re.compile(r"\b(config|cfg|c|s|d|tr|o)\.(\w+\.)*get\(\"")
  hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
          for p in MODULES.values()
          for i, line in enumerate(p.read_text().splitlines(), 1)
          if pattern.search(line)]
  assert not hits, "\n".join(hits)
