"""The package's layering, checked on its source: module-level imports between xmae_jax modules
form no circle and never point up the layers (base < data < models < training < evaluation <
interop < benchmarks < cli; `base` is every top-level module such as errors, paths, config_lib).
Imports inside functions (optional heavy dependencies, lazy loading) are not module-level.
No module is longer than MAX_LINES."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "xmae_jax"
ORDER = ("base", "data", "models", "training", "evaluation", "interop", "benchmarks", "cli")


def _layer(module: str) -> int:
  parts = module.split(".")
  return ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in ORDER else 0


def _name(path: Path) -> str:
  name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
  return name.removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
  modules = {_name(p): p for p in ROOT.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.parse(path.read_text()).body:
      for n in node.body if isinstance(node, ast.If) else [node]:  # `if TYPE_CHECKING:` too
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("xmae_jax"):
          for alias in n.names:
            full = f"{n.module}.{alias.name}"
            targets.add(full if full in modules else n.module)
        elif isinstance(n, ast.Import):
          targets.update(a.name for a in n.names if a.name.startswith("xmae_jax"))
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def test_no_import_points_up_the_layers():
  graph = _graph()
  assert len(graph) > 100  # the walk found the package
  up = sorted(
      (m, t) for m, ts in graph.items() for t in ts if m != "xmae_jax" and _layer(t) > _layer(m)
  )
  assert up == []


def test_no_import_circle():
  graph, state, circles = _graph(), {}, []

  def visit(module, path):
    state[module] = "open"
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        circles.append(path[path.index(target) :] + [target])
      elif target not in state:
        visit(target, path + [target])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert circles == []


MAX_LINES = 500  # a module longer than this holds more than one concept: split it by concept


def test_no_module_exceeds_the_line_limit():
  long = sorted(
      (str(p.relative_to(ROOT.parent)), n)
      for p in ROOT.rglob("*.py")
      if (n := len(p.read_text().splitlines())) > MAX_LINES
  )
  assert long == []
