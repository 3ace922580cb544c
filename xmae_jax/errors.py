"""The user-error base class; imported by every layer, imports nothing.

`XmaeError` is what a user can fix (a bad setting, a missing or malformed file): its message is
one line naming the value or file, and every command-line tool prints it as one line on stderr
and exits 1. Anything else is a bug and keeps its traceback. Modules subclass it only where a
caller tells the cases apart.

`storage_reason` tells a write the storage refused (full disk, read-only, quota, permission, I/O
error) from other errors, also when a library wrapped the OSError: the one place that turns
such an OSError into the reason a message names. `check_writable` tries a destination before
any work is done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


class XmaeError(ValueError):
  """A problem the user can fix; the message is one line for the user.

  A ValueError so that callers written against the standard exception keep working.
  """


# ---- storage that cannot take a write --------------------------------------------------------

# What the user reads for each errno of a destination that cannot take a write (a full disk, a
# read-only mount, a failing device): the system's own text (os.strerror), lower-cased.
# Libraries that wrap the OSError in their own error (TensorStore, under Orbax) keep that text,
# which is how a wrapped one is recognised.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def storage_reason(e: BaseException, *, system_text: bool = False) -> str | None:
  """'no space left on device' (or 'read-only file system', ...) when `e`, or an exception it
  was raised from, is a write refused by the storage; None for anything else.

  `system_text`: the system's own wording instead ('No space left on device', os.strerror),
  as the encoder package's messages print it.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    code = e.errno if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS else None
    if code is None:
      text = str(e).lower()
      code = next((c for c, reason in STORAGE_ERRNOS.items() if reason in text), None)
    if code is not None:
      return os.strerror(code) if system_text else STORAGE_ERRNOS[code]
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
      with contextlib.suppress(OSError):  # the empty folder this attempt made
        directory.rmdir()
    reason = STORAGE_ERRNOS.get(e.errno) or e.strerror or type(e).__name__
    raise XmaeError(f"{what} {directory} is not writable ({reason})") from None
  return directory
