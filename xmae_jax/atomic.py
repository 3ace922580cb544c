"""The one atomic write: how every file of the package is written.

The content goes to a temporary name beside the target and is renamed into place only when the
writer finished, so a reader never sees a half-written file and a crash leaves the previous
version (or nothing) behind. Imports nothing of the package: every layer writes through it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None) -> Iterator[Path]:
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename.

  The temporary name keeps `path`'s suffix (or `suffix`), so writers that choose a format by the
  file name (matplotlib, numpy) still do. On an exception the temporary file or folder is
  removed and `path` is left as it was.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  ext = path.suffix if suffix is None else suffix
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      tmp.unlink(missing_ok=True)
    raise


def atomic_write(path, data: bytes | str) -> Path:
  """Writes `data` (text as UTF-8) to `path` atomically; returns the path."""
  path = Path(path)
  with atomic_path(path) as tmp:
    if isinstance(data, str):
      tmp.write_text(data, encoding="utf-8")
    else:
      tmp.write_bytes(data)
  return path
