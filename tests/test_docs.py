"""The documents stay references: every relative link resolves, nothing points outside the
repository, and no text narrates the work's history (that lives in git and CHANGELOG.md).

Pure file checks: no JAX, no data.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folders whose files belong to the repository (not runs, venvs or build outputs, which may hold
# reports named *.md).
SOURCE_DIRS = ("configs", "docs", "examples", "launch", "tests", "xmae_jax")
CODE_SUFFIXES = (".py", ".sh", ".sbatch", ".cfg", ".toml")

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _files(suffixes):
  found = [p for p in REPO.iterdir() if p.is_file() and p.name.endswith(suffixes)]
  for d in SOURCE_DIRS:
    found += [p for p in (REPO / d).rglob("*") if p.is_file() and p.name.endswith(suffixes)]
  return sorted(found)


MARKDOWN = _files((".md",))


def _prose(text: str) -> str:
  """The text without fenced blocks and code spans, where a link is an example, not a link."""
  return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(md: Path) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
  seen, out = {}, set()
  for heading in _HEADING.findall(_FENCE.sub("", md.read_text(encoding="utf-8"))):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def _rel(p: Path) -> str:
  return str(p.relative_to(REPO))


def test_the_documents_are_found():
  names = {_rel(p) for p in MARKDOWN}
  assert {"README.md", "EVALUATION.md", "BENCHMARKS.md", "docs/evaluation.md"} <= names


@pytest.mark.parametrize("md", MARKDOWN, ids=_rel)
def test_every_relative_link_resolves(md):
  broken = []
  for target in _LINK.findall(_prose(md.read_text(encoding="utf-8"))):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # a scheme: checked by the test below
      continue
    path, _, anchor = target.partition("#")
    dest = (md.parent / path).resolve() if path else md
    if not dest.exists():
      broken.append(f"{target} (no such file)")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      broken.append(f"{target} (no heading #{anchor} in {_rel(dest)})")
  assert not broken, f"{_rel(md)}: {broken}"


@pytest.mark.parametrize("md", MARKDOWN, ids=_rel)
def test_no_document_points_outside_the_repository(md):
  text = md.read_text(encoding="utf-8")
  for needle in ("http://", "https://", "../shared", "NOTES_", "paper_notes"):
    assert needle not in text, f"{_rel(md)} contains {needle!r}"


@pytest.mark.parametrize("md", MARKDOWN, ids=_rel)
def test_no_document_narrates_work_sessions(md):
  lines = [
      f"{i}: {line.strip()}"
      for i, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1)
      if re.search(r"session", line, re.I)
  ]
  assert not lines, f"{_rel(md)}: {lines}"


# Technical uses of the word in code: subprocess and pytest API names, ONNX/TF session classes.
_API_SESSION = re.compile(
    r"start_new_session|scope=[\"']session[\"']|[A-Za-z.]Session\b"
    r"|^\s*def pytest_\w+\(.*\bsession\b"
)


def test_no_code_comment_narrates_work_sessions_or_cites_notes():
  found = []
  for path in _files(CODE_SUFFIXES):
    if path.resolve() == Path(__file__).resolve():
      continue
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
      rest = _API_SESSION.sub("", line)
      if re.search(r"session", rest, re.I) or re.search(r"NOTES_|paper_notes|shared/docs", line):
        found.append(f"{_rel(path)}:{i}: {line.strip()}")
  assert not found, "\n".join(found)


def test_readme_is_short_with_the_quickstart_on_its_first_screens():
  lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
  assert len(lines) <= 260, f"README.md has {len(lines)} lines"
  quickstart = [
      i for i, line in enumerate(lines, 1) if line.startswith("#") and "quickstart" in line.lower()
  ]
  assert quickstart and quickstart[0] <= 100, f"quickstart heading at line(s) {quickstart}"
