"""Folder locks: one writer per folder at a time (a training workdir, a dataset being prepared).

Two writers on one folder would overwrite each other's files (two trainers resuming from the
same checkpoints; two `xmae-prepare --overwrite` runs rewriting the same cache and shards). A
writer takes `acquire(folder, ...)` before it reads or writes anything there; a second one is
refused with one line naming the holder (process id, host and start time, written into the
lock file).

The lock is `fcntl.flock` on a file in the folder, so the kernel releases it when the holder
exits or is killed: a crashed run's rerun is never refused, and no stale lock needs clearing by
hand (the file itself stays; its content is only a description of the last holder). Imported
by every layer that writes folders; imports only `errors`.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from xmae_jax import errors


class FolderBusyError(errors.XmaeError):
  """Another live process holds the folder's lock."""


def holder(path) -> str:
  """'pid P on host H (since T)' from a lock file, or 'another process' when unreadable."""
  try:
    info = json.loads(Path(path).read_text())
    return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
  except (OSError, ValueError, KeyError, TypeError):
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
        "%s: cannot lock (%s); two runs on this folder would not be told apart", path,
        e.strerror)
    return -1
  since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": since}).encode(), 0)
  return fd


def refusal(folder, path, what: str, advice: str) -> str:
  """The one-line refusal: '<what> <folder> is in use by pid P on host H (since T): <advice>'."""
  return f"{what} {folder} is in use by {holder(path)}: {advice}"


def acquire(path, *, folder=None, what: str = "folder",
            advice: str = "wait for that run to end") -> FolderLock:
  """Takes the lock file `path` or raises FolderBusyError naming the holder and `folder` (the
  folder it guards; default the lock file's own)."""
  path = Path(path)
  folder = path.parent if folder is None else folder
  fd = try_lock(path)
  if fd is None:
    raise FolderBusyError(refusal(folder, path, what, advice))
  return FolderLock(path, fd if fd >= 0 else None)
