"""The user-error base class and the one atomic write; imported by every layer, imports nothing
(but `paths`, when a write goes to an object-store URL).

`XmaeError` is what a user can fix (a bad setting, a missing or malformed file): its message is
one line naming the value or file, and every command-line tool prints it as one line on stderr
and exits 1. Anything else is a bug and keeps its traceback. Modules subclass it only where a
caller tells the cases apart.

`atomic_path` is the one way files are written: the content goes to a temporary name beside the
target and is renamed into place only when the writer finished, so a reader never sees a
half-written file and a crash leaves the previous version (or nothing) behind. On an object
store (gs://) it is an object write: staged locally, uploaded whole.

`storage_reason` tells a write the storage refused (full disk, read-only, quota) from other
errors, also when a library wrapped the OSError; `check_writable` tries a destination before
any work is done.
"""
from __future__ import annotations

import contextlib
import errno
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
  from xmae_jax import paths   # paths builds on this module: imported at use
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
  """Writes `data` (text as UTF-8) to `path` atomically; returns the path."""
  with atomic_path(path) as tmp:
    if isinstance(data, str):
      tmp.write_text(data, encoding="utf-8")
    else:
      tmp.write_bytes(data)
  from xmae_jax import paths   # paths builds on this module: imported at use
  return paths.path(path)


# ---- storage that cannot take a write --------------------------------------------------------

# What the user reads for each errno of a destination that cannot take a write (a full disk, a
# read-only mount); libraries that wrap the OSError in their own error (TensorStore, under
# Orbax) keep the system's text, which the patterns below recognise.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}
_STORAGE_TEXTS = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT,
                  "read-only file system": errno.EROFS}


def storage_reason(e: BaseException) -> str | None:
  """'no space left on device' (or 'read-only file system', ...) when `e`, or an exception it
  was raised from, is a write refused by the storage; None for anything else."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      return STORAGE_ERRNOS[e.errno]
    text = str(e).lower()
    for pattern, code in _STORAGE_TEXTS.items():
      if pattern in text:
        return STORAGE_ERRNOS[code]
    e = e.__cause__ or e.__context__
  return None


def check_writable(directory, what: str = "output folder", *, create: bool = True) -> Path:
  """Tries a probe file in `directory` so that a destination that cannot take files fails at
  once with one line instead of after the work. Trying is the only reliable test: permission
  bits do not stop root, and say nothing of a read-only mount or a full disk.

  create=True makes `directory` (with its parents) first; create=False probes its nearest
  existing folder and makes nothing.
  """
  directory = Path(directory)
  probe_dir = directory
  created = False
  try:
    if create:
      created = not directory.exists()
      directory.mkdir(parents=True, exist_ok=True)
    else:
      probe_dir = directory.absolute()
      while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
      if not probe_dir.is_dir():
        raise XmaeError(f"{what} {directory} is not writable ({probe_dir} is not a directory)")
    fd, probe = tempfile.mkstemp(prefix=".xmae-write-probe-", dir=probe_dir)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    if created:
      with contextlib.suppress(OSError):   # the empty folder this attempt made
        directory.rmdir()
    reason = STORAGE_ERRNOS.get(e.errno) or e.strerror or type(e).__name__
    raise XmaeError(f"{what} {directory} is not writable ({reason})") from None
  return directory
