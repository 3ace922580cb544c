"""Imports inside functions say why they are there.

An import belongs at the top of its module unless there is a reason to delay it: an optional
extra (torch, apache_beam, pyedflib, wandb, h5py, jax2onnx, ...), the import time of a command's
--help or of `import xmae_jax`, a layer that must not load JAX, a setting that has to come first
(the malloc setting before JAX's threads, matplotlib's backend), or a circle the layering would
otherwise close. Every function-local import carries that reason as a comment on its own line or
on the line above; a run of imports under one comment shares it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "xmae_jax"


def _local_imports(tree: ast.AST) -> list[ast.stmt]:
  found = {}
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for node in ast.walk(fn):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          found[node.lineno] = node
  return [found[k] for k in sorted(found)]


def unexplained_local_imports(source: str) -> list[int]:
  """Line numbers of function-local imports without a comment on their line or the line above
  (or above the run of imports they continue, blank lines between them allowed)."""
  lines = source.splitlines()
  explained: set[int] = set()
  bad = []
  for node in _local_imports(ast.parse(source)):
    own = lines[node.lineno - 1]
    prev = node.lineno - 1  # 1-based number of the line above
    while prev >= 1 and not lines[prev - 1].strip():
      prev -= 1
    above = lines[prev - 1].strip() if prev >= 1 else ""
    if "#" in own or above.startswith("#") or prev in explained:
      explained.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    else:
      bad.append(node.lineno)
  return bad


def test_the_check_tells_explained_from_unexplained_imports():
  source = (
      "def f():\n"
      "  import a  # optional extra\n"
      "  # JAX must not load before the flags are parsed\n"
      "  import b\n"
      "  import c\n"
      "\n"
      "  from d import e\n"
      "  x = 1\n"
      "  import g\n"
      "def h():\n"
      '  """doc"""\n'
      "  import i\n"
  )
  assert unexplained_local_imports(source) == [9, 12]


def test_every_function_local_import_says_why():
  bad = []
  for path in sorted(ROOT.rglob("*.py")):
    for line in unexplained_local_imports(path.read_text()):
      bad.append(f"{path.relative_to(ROOT.parent)}:{line}")
  assert bad == []
