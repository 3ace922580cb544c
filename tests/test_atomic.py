"""The one atomic write: the target is replaced whole or left as it was."""

import pytest

from xmae_jax import atomic


def test_atomic_write_replaces_whole_file(tmp_path):
  path = tmp_path / "sub" / "a.json"
  atomic.atomic_write(path, "old")
  atomic.atomic_write(path, b"new")
  assert path.read_text() == "new"
  assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failed_writer_leaves_previous_content_and_no_temporary(tmp_path):
  path = tmp_path / "a.txt"
  atomic.atomic_write(path, "kept")
  with pytest.raises(RuntimeError):
    with atomic.atomic_path(path) as tmp:
      tmp.write_text("half")
      raise RuntimeError("writer died")
  assert path.read_text() == "kept"
  assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_temporary_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
  with atomic.atomic_path(tmp_path / "fig.png") as tmp:
    assert tmp.suffix == ".png" and tmp.parent == tmp_path
    tmp.write_bytes(b"x")
  assert (tmp_path / "fig.png").read_bytes() == b"x"
