"""The workdir lock: one training run per workdir at a time.

Two trainers on one workdir would both resume from (or start over) the same checkpoints and
overwrite each other's files. The trainer takes `acquire(workdir)` before it reads or writes
anything there; a second one is refused with one line naming the holder (process id, host and
start time, written into the lock file).

The lock is `xmae_jax.locks` (`fcntl.flock`) on WORKDIR/xmae-train.lock, so the kernel releases
it when the holder exits or is killed: a crashed run's rerun is never refused. In a
gs:// workdir it is a lock object (`locks.ObjectLock`: the owner, written with a generation
precondition, refreshed while the run lives, deleted at its end). In a
multi-process run only process 0 takes it (on a filesystem shared across hosts every process
would otherwise lock out the others), and its answer is broadcast so that every process of a
refused run stops with the same line.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from xmae_jax import locks
from xmae_jax import paths
from xmae_jax import training

LOCK_FILE = "xmae-train.lock"


class WorkdirBusyError(locks.FolderBusyError, training.TrainingError):
  """Another live process holds the workdir."""


WorkdirLock = locks.FolderLock


def acquire(workdir, *, tool: str = "xmae-train") -> WorkdirLock:
  """Takes the workdir lock (process 0) or fails on every process with one line naming the
  holder. Every process of a run must call it."""
  path = paths.path(workdir) / LOCK_FILE
  lock = locks.take(path) if jax.process_index() == 0 else WorkdirLock(path, None)
  ok = lock is not None
  if jax.process_count() > 1:
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
  if not ok:
    if lock is not None:
      lock.release()
    raise WorkdirBusyError(
        locks.refusal(
            workdir,
            path,
            "workdir",
            f"wait for that run to end " f"or give {tool} another --workdir",
        )
    )
  return lock
