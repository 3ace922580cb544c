"""The user-error base class and the one atomic write; imported by every layer, imports nothing.

`XmaeError` is what a user can fix (a bad setting, a missing or malformed file): its message is
one line naming the value or file, and every command-line tool prints it as one line on stderr
and exits 1. Anything else is a bug and keeps its traceback. Modules subclass it only where a
caller tells the cases apart.

`atomic_path` is the one way files are written: the content goes to a temporary name beside the
target and is renamed into place only when the writer finished, so a reader never sees a
half-written file and a crash leaves the previous version (or nothing) behind.
`check_writable` asks the file system, before any work, whether a tool's output can be written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class XmaeError(ValueError):
  """A problem the user can fix; the message is one line for the user.

  A ValueError so that callers written against the standard exception keep working.
  """


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


def check_writable(folder, what: str = "output") -> None:
  """Raises XmaeError (one line naming `what` and the folder) unless a file can be created in
  `folder`, or in its nearest existing parent when it does not exist yet: a read-only file system
  or a folder without write permission is refused before any work rather than after it. The
  probe is an unnamed temporary file, so nothing is left behind."""
  folder = Path(folder).absolute()
  probe = folder
  while not probe.exists() and probe != probe.parent:
    probe = probe.parent
  if not probe.is_dir():
    raise XmaeError(f"cannot write {what} in {folder}: {probe} is not a directory")
  try:
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise XmaeError(f"cannot write {what} in {folder}: {e.strerror or type(e).__name__}") from None
