"""The workdir lock: one training run per workdir at a time.

Two trainers on one workdir would both resume from (or start over) the same checkpoints and
overwrite each other's files. The trainer takes `acquire(workdir)` before it reads or writes
anything there; a second one is refused with one line naming the holder (process id, host and
start time, written into the lock file).

The lock is `fcntl.flock` on WORKDIR/xmae-train.lock, so the kernel releases it when the holder
exits or is killed: a crashed run's rerun is never refused, and no stale lock needs clearing by
hand (the file itself stays; its content is only a description of the last holder). In a
multi-process run only process 0 takes it (on a filesystem shared across hosts every process
would otherwise lock out the others), and its answer is broadcast so that every process of a
refused run stops with the same line.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

import numpy as np
from absl import logging

from xmae_jax import errors

LOCK_FILE = "xmae-train.lock"


class WorkdirBusyError(errors.XmaeError):
  """Another live process holds the workdir."""


def _holder(path: Path) -> str:
  try:
    info = json.loads(path.read_text())
    return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


class WorkdirLock:
  """A held lock (or, on processes other than 0, the run's share of it); `release()` frees it."""

  def __init__(self, path: Path, fd: int | None):
    self.path, self._fd = path, fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _try_lock(path: Path) -> int | None:
  """The open, locked file descriptor; None when a live process holds the lock; -1 when the
  filesystem has no locks."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return None
    # A filesystem without locks (some FUSE mounts): run unguarded rather than not at all.
    logging.warning("%s: cannot lock (%s); two runs on this workdir would not be told apart",
                    path, e.strerror)
    return -1
  since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
  return fd


def acquire(workdir, *, tool: str = "xmae-train") -> WorkdirLock:
  """Takes the workdir lock (process 0) or fails on every process with one line naming the
  holder. Every process of a run must call it."""
  import jax
  path = Path(workdir) / LOCK_FILE
  fd = _try_lock(path) if jax.process_index() == 0 else -1
  ok = fd is not None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
  if not ok:
    raise WorkdirBusyError(f"workdir {workdir} is in use by {_holder(path)}: wait for that run to "
                           f"end or give {tool} another --workdir")
  return WorkdirLock(path, fd if fd is not None and fd >= 0 else None)
