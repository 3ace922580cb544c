"""The processes of a multi-host run: joining them, watching them, and stopping them together.

  cluster_environment()   the multi-host environment JAX can detect here (TPU pod, SLURM, MPI)
  initialize(...)         `jax.distributed` from explicit flags, else from that environment
  CompiledTogether        a step compiled by every process before any runs it (compile barrier)
  PeerWatch / watching()  the peer heartbeat: a lost process ends the others with one line
  Preemption              SIGTERM / Ctrl-C -> every process saves the same step and stops

The heartbeat and the compile barrier use the distributed runtime's client (its key-value store
and barriers), which JAX gives no public name: `runtime_client()` is the one place that reaches
into `jax._src`, and it fails with one line naming the JAX version if that moved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator

import jax
from jax.experimental import multihost_utils

from xmae_jax import paths
from xmae_jax import training
from xmae_jax.training import checkpoint as ckpt_lib


class DistributedError(training.TrainingError):
  """Flags of a multi-process run that do not fit, or a JAX without the runtime client."""


def cluster_environment() -> str | None:
  """The multi-host environment JAX can auto-detect here, or None for a single process."""
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or os.environ.get(
      "MEGASCALE_COORDINATOR_ADDRESS"
  ):
    return "Cloud TPU pod"
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Joins the processes of a multi-host run: from the arguments, else from the cluster's
  environment; a no-op for a single process. Called from a tool's main only, never at import
  time (Grain worker processes re-import modules)."""
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise DistributedError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
  elif cluster_environment() is not None:
    jax.distributed.initialize()


def runtime_client():
  """The distributed runtime's client of this process (key-value store, barriers).

  JAX keeps it at `jax._src.distributed.global_state.client`, with no public name; a JAX that
  moved it ends the run here with one line instead of an AttributeError deep in a thread."""
  try:
    # Here, not at the top: a JAX without it fails this call with one line, not the import.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client
  except (ImportError, AttributeError):
    raise DistributedError(
        f"jax {jax.__version__} has no jax._src.distributed.global_state.client, which "
        "multi-process runs use for their compile barrier and peer heartbeat: install a jax "
        "version within the range setup.py names"
    ) from None


# --- the compile barrier ---------------------------------------------------------------------

COMPILE_BARRIER_TIMEOUT_S = 3600


class CompiledTogether:
  """A jitted function compiled at its first call, which returns once EVERY process has compiled
  it (a barrier of the distributed runtime); then the compiled executable is called.

  Why: only process 0 writes the persistent compilation cache, and on CPU the cache key differs
  per process (it hashes the topology, which names the process), so on a rerun process 0 loads a
  step from the cache while the others compile it anew (as on hosts with separate caches). The
  first cross-process collective (gloo on CPU) waits only 30 s for a peer, and a step compile
  can take minutes. The runtime's barrier is no collective and waits `COMPILE_BARRIER_TIMEOUT_S`.
  """

  _count = 0  # barrier ids: every process compiles the same programs in the same order

  def __init__(self, jitted, name: str):
    self.jitted, self.name, self.compiled = jitted, name, None

  def compile(self, *args):
    """Compiles for arguments shaped like `args`, then waits for every process to have done so."""
    if self.compiled is None:
      self.compiled = self.jitted.lower(*args).compile()
      if jax.process_count() > 1:
        CompiledTogether._count += 1
        runtime_client().wait_at_barrier(
            f"xmae_compiled_{CompiledTogether._count}_{self.name}", COMPILE_BARRIER_TIMEOUT_S * 1000
        )
    return self.compiled

  def __call__(self, *args):
    return self.compile(*args)(*args)


# --- the peer heartbeat ----------------------------------------------------------------------


def lost_peer_message(lost: list[int], process_index: int, process_count: int, workdir) -> str:
  """One line: which processes were lost, and the last intact checkpoint."""
  steps = ckpt_lib.committed_steps(workdir)
  folder = paths.path(workdir) / ckpt_lib.CHECKPOINT_DIR
  saved = (
      f"the last checkpoint (step {steps[-1]} in {folder}) is intact: rerun the same "
      "command on every process to resume"
      if steps
      else "no checkpoint had been written"
  )
  return (
      f"lost process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
      f"{process_count} (it stopped answering: killed, crashed or unreachable); process "
      f"{process_index} stopped too; {saved}"
  )


class PeerWatch:
  """Notices a lost process of a multi-process run and ends this one with one line.

  Each process bumps its own counter in the distributed runtime's key-value store every
  `interval` s (a thread); a peer whose counter has not moved for `lost_after` s, or a
  coordinator (process 0, which holds the store) that no longer answers, is lost: this process
  prints `PROG: error: lost process ...` and exits 1 at once. Why not the runtime's own check:
  it fires later (heartbeat timeout 100 s) and aborts the process from a C++ thread with a
  fatal error and stack dumps (its Python callback hook cannot receive the error), and a clean
  exit would then wait minutes at the shutdown barrier for the lost process. A process that
  ends (done or failed) says so first, so that its peers do not mistake it for lost.
  """

  KEY = "xmae_train_alive/"

  def __init__(
      self, workdir, *, prog: str = "xmae-train", interval: float = 2.0, lost_after: float = 45.0
  ):
    self.client = runtime_client()
    self.me, self.n = jax.process_index(), jax.process_count()
    self.workdir, self.prog, self.interval, self.lost_after = workdir, prog, interval, lost_after
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._run, name="xmae-peer-watch", daemon=True)

  @classmethod
  def start(cls, workdir, **kwargs) -> "PeerWatch | None":
    if jax.process_count() == 1:
      return None
    watch = cls(workdir, **kwargs)
    watch.thread.start()
    return watch

  def stop(self) -> None:
    """This process is ending on its own: peers stop watching it."""
    self.stopped.set()
    try:
      self.client.key_value_set(f"{self.KEY}{self.me}", "done", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (the store is gone with process 0)
      pass

  def _run(self) -> None:
    peers = [i for i in range(self.n) if i != self.me]
    seen = {i: (None, time.monotonic()) for i in peers}
    count, unreachable_since = 0, None
    while not self.stopped.wait(self.interval):
      now = time.monotonic()
      try:
        count += 1
        self.client.key_value_set(f"{self.KEY}{self.me}", str(count), allow_overwrite=True)
        values = {i: self._get(i) for i in peers}
        unreachable_since = None
      except Exception:  # pylint: disable=broad-except  (the coordinator does not answer)
        unreachable_since = unreachable_since or now
        if self.me != 0 and now - unreachable_since > self.lost_after:
          self._exit([0])
        continue
      lost = []
      for i, value in values.items():
        if value == "done":
          seen[i] = (value, float("inf"))
        elif value != seen[i][0]:
          seen[i] = (value, now)
        elif now - seen[i][1] > self.lost_after:
          lost.append(i)
      if lost and not self.stopped.is_set():
        self._exit(lost)

  def _get(self, i: int) -> str | None:
    try:
      return self.client.key_value_try_get(f"{self.KEY}{i}")
    except Exception as e:  # pylint: disable=broad-except
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None  # not started yet
      raise

  def _exit(self, lost: list[int]) -> None:
    try:
      sys.stdout.flush()
      print(
          f"{self.prog}: error: {lost_peer_message(lost, self.me, self.n, self.workdir)}",
          file=sys.stderr,
          flush=True,
      )
    finally:
      os._exit(1)


@contextlib.contextmanager
def watching(workdir, *, prog: str = "xmae-train") -> Iterator[PeerWatch | None]:
  """A `PeerWatch` over the block (None for one process), stopped however the block ends.

  A JAX runtime error in the block is most likely a collective that failed because a peer
  died: the watch names that peer and exits within its bound, so the error waits for it; any
  other error goes on after that."""
  watch = PeerWatch.start(workdir, prog=prog)
  try:
    yield watch
  except jax.errors.JaxRuntimeError:
    if watch is not None:
      time.sleep(watch.lost_after + 4 * watch.interval)
    raise
  finally:
    if watch is not None:
      watch.stop()


# --- preemption ------------------------------------------------------------------------------


class Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> save and stop. One process: a signal handler (a second
  Ctrl-C stops at once, as KeyboardInterrupt); several: JAX's preemption sync point for
  SIGTERM, so every process agrees on the step and saves its part (Ctrl-C stops them unsaved).

  `signal` names the signal that stopped the run (None while none came)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: str | None = None
    self._previous = {}
    if jax.process_count() == 1:
      for signum in self.SIGNALS:
        try:
          self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
          pass

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # asked twice: the user does not want to wait for the save
    self.signal = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal = "SIGTERM"
      except RuntimeError:  # preemption service not running (e.g. disabled by config)
        return False
    return self.signal is not None

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
