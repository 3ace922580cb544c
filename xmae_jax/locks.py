"""Folder locks: one writer per folder at a time (a training workdir, a dataset being prepared).

Two writers on one folder would overwrite each other's files (two trainers resuming from the
same checkpoints; two `xmae-prepare --overwrite` runs rewriting the same cache and shards). A
writer takes `acquire(folder, ...)` before it reads or writes anything there; a second one is
refused with one line naming the holder (process id, host and start time, written into the
lock file).

The lock is `fcntl.flock` on a file in the folder, so the kernel releases it when the holder
exits or is killed: a crashed run's rerun is never refused, and no stale lock needs clearing by
hand (the file itself stays; its content is only a description of the last holder). Imported
by every layer that writes folders; imports only `errors` and `paths`.

On an object store (a gs:// workdir) there is no flock: `ObjectLock` is an object holding the
owner, created only where none exists (a generation precondition, so of two runs starting at
once one wins), refreshed by its holder every HEARTBEAT_S seconds and deleted on release. A
holder that died without releasing leaves it behind; a lock not refreshed for STALE_S seconds,
or one left by a dead process of this host, is taken over (with a warning).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
from pathlib import Path

from xmae_jax import errors
from xmae_jax import paths


class FolderBusyError(errors.XmaeError):
  """Another live process holds the folder's lock."""


def holder(path) -> str:
  """'pid P on host H (since T)' from a lock file, or 'another process' when unreadable."""
  try:
    info = json.loads(paths.path(path).read_text())
    return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
  except Exception:  # pylint: disable=broad-except  # unreadable: local or object store alike
    return "another process"


class FolderLock:
  """A held lock (or a stand-in that holds nothing); `release()` frees it."""

  def __init__(self, path: Path, fd: int | None):
    self.path, self._fd = path, fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "FolderLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def try_lock(path) -> int | None:
  """The open, locked file descriptor of the lock file `path` (created with its folder), with
  this process described in it; None when a live process holds the lock; -1 when the file
  system has no locks."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return None
    # A file system without locks (some FUSE mounts): run unguarded rather than not at all.
    logging.getLogger(__name__).warning(
        "%s: cannot lock (%s); two runs on this folder would not be told apart", path, e.strerror
    )
    return -1
  since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  os.ftruncate(fd, 0)
  os.pwrite(
      fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0
  )
  return fd


def refusal(folder, path, what: str, advice: str) -> str:
  """The one-line refusal: '<what> <folder> is in use by pid P on host H (since T): <advice>'."""
  return f"{what} {folder} is in use by {holder(path)}: {advice}"


def acquire(
    path, *, folder=None, what: str = "folder", advice: str = "wait for that run to end"
) -> FolderLock:
  """Takes the lock file `path` or raises FolderBusyError naming the holder and `folder` (the
  folder it guards; default the lock file's own)."""
  path = Path(path)
  folder = path.parent if folder is None else folder
  fd = try_lock(path)
  if fd is None:
    raise FolderBusyError(refusal(folder, path, what, advice))
  return FolderLock(path, fd if fd >= 0 else None)


# ---- a lock on an object store ---------------------------------------------------------------

HEARTBEAT_S = 60.0
STALE_S = 600.0


def _now() -> float:
  return datetime.datetime.now(datetime.timezone.utc).timestamp()


def _owner_bytes(since: str) -> bytes:
  return json.dumps(
      {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "heartbeat": _now()}
  ).encode()


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError, OverflowError):
    return True
  return True


def _abandoned(raw: bytes) -> str | None:
  """Why the lock object `raw` holds nothing any more (None while its holder may be alive)."""
  try:
    info = json.loads(raw)
    beat = float(info.get("heartbeat", 0))
  except (ValueError, TypeError, AttributeError):
    return "unreadable"
  if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
    return f"pid {info.get('pid')} on this host has ended"
  if _now() - beat > STALE_S:
    return f"not refreshed for {int(_now() - beat)} s"
  return None


class ObjectLock(FolderLock):
  """The lock object of a remote folder, held while this process runs (see the module doc)."""

  def __init__(self, path, store, generation: bytes, since: str):
    super().__init__(path, None)
    self._store, self._generation, self._since = store, generation, since
    self._stop = threading.Event()
    self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="xmae-lock")
    self._beat.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        stamp = self._store.write("", _owner_bytes(self._since), if_equal=self._generation).result()
      except Exception as e:  # pylint: disable=broad-except  # the storage is away: try again
        logging.getLogger(__name__).warning("%s: cannot refresh the lock (%s)", self.path, e)
        continue
      if not stamp.generation:  # another run took the lock over: it thought this one dead
        logging.getLogger(__name__).warning(
            "%s: the lock was taken over by %s", self.path, holder(self.path)
        )
        return
      self._generation = stamp.generation

  def release(self) -> None:
    if self._store is None:
      return
    self._stop.set()
    self._beat.join()
    try:
      self._store.write("", None, if_equal=self._generation).result()
    except Exception as e:  # pylint: disable=broad-except  # left behind; a rerun takes it over
      logging.getLogger(__name__).warning("%s: cannot remove the lock (%s)", self.path, e)
    self._store = None


def try_lock_object(path) -> ObjectLock | None:
  """The lock object `path` (a URL) taken by this process, or None while a live run holds it.

  The object is written through TensorStore with a generation precondition: created only if
  absent, or replaced only if it is still the abandoned version that was read.
  """
  import tensorstore as ts  # Orbax's storage layer: it honours TENSORSTORE_GCS_HTTP_URL

  store = ts.KvStore.open(paths.text(path)).result()
  current = store.read("").result()
  if current.state == "value":
    why = _abandoned(current.value)
    if why is None:
      return None
    logging.getLogger(__name__).warning(
        "%s: taking over an abandoned lock (%s; it was %s)", path, why, holder(path)
    )
  since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  stamp = store.write("", _owner_bytes(since), if_equal=current.stamp.generation).result()
  if not stamp.generation:  # another run wrote the lock between the read and this write
    return None
  return ObjectLock(path, store, stamp.generation, since)


def take(path) -> FolderLock | None:
  """The lock `path` (a local lock file or a URL) held by this process, or None while a live
  process holds it; a stand-in holding nothing on a file system without locks."""
  if paths.is_remote(path):
    return try_lock_object(path)
  fd = try_lock(path)
  return None if fd is None else FolderLock(Path(path), fd if fd >= 0 else None)
