"""The one atomic write: how every file of the package is written.

The content goes to a temporary name beside the target and is renamed into place only when the
writer finished, so a reader never sees a half-written file and a crash leaves the previous
version (or nothing) behind. On an object store (a gs:// URL) it is an object write: staged
locally, uploaded whole. Imports nothing of the package at load time (`paths`, which builds on
this module, when a write goes to a URL): every layer writes through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None) -> Iterator[Path]:
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename.

  The temporary name keeps `path`'s suffix (or `suffix`), so writers that choose a format by the
  file name (matplotlib, numpy) still do. On an exception the temporary file or folder is
  removed and `path` is left as it was.
  """
  from xmae_jax import paths  # paths builds on this module: imported at use

  if paths.is_remote(path):
    # An object store has no rename, and needs none: an object write is atomic by itself (the
    # object appears whole when its upload completes). So the content is staged in a local
    # temporary file or folder and uploaded once the writer finished (a folder file by file).
    with tempfile.TemporaryDirectory(prefix="xmae-upload-") as staging:
      name = paths.path(path).name
      tmp = Path(staging) / (name if suffix is None else Path(name).stem + suffix)
      yield tmp
      paths.upload(tmp, path)
    return
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


def atomic_write(path, data: bytes | str):
  """Writes `data` (text as UTF-8) to `path` atomically; returns the path (`paths.path`)."""
  with atomic_path(path) as tmp:
    if isinstance(data, str):
      tmp.write_text(data, encoding="utf-8")
    else:
      tmp.write_bytes(data)
  from xmae_jax import paths  # paths builds on this module: imported at use

  return paths.path(path)
