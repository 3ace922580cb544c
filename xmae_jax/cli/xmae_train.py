"""xmae-train: pretrain a model config on a prepared dataset directory.

  xmae-train --config configs/xmae.py:demo --workdir runs/demo --config.data.dir data/synthetic
  python -m xmae_jax.cli.xmae_train --config configs/m2ae.py --workdir runs/m2ae --config.train.lr=1e-4

Flags: `--config FILE[:PRESET[,key=value...]]` plus `--config.section.field=value` overrides,
`--workdir` (created; a run there resumes from its latest checkpoint), and for multi-host runs
`--coordinator_address HOST:PORT --num_processes N --process_id I`. Without them, a cluster's
environment is used when present (Cloud TPU pod slices, SLURM with more than one task);
otherwise the run is one process. Bad settings end with one line on stderr and exit status 1;
a run stopped by SIGTERM saves a checkpoint and exits with status 143. In a multi-process run,
when a process dies the others end within the runtime's heartbeat timeout (100 s) with one line
naming the lost process and the last intact checkpoint, and exit status 1.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

from absl import app
from absl import flags
from absl import logging

from xmae_jax import config_lib
from xmae_jax.cli import common
from xmae_jax.errors import XmaeError

PROG = "xmae-train"
PEER_LOSS_WAIT_S = 130   # jax.distributed's heartbeat timeout (100 s) and a margin

_CONFIG = flags.DEFINE_string(
    "config", None, "Config FILE[:PRESET[,key=value...]], e.g. configs/xmae.py:demo (fields "
    "overridable with --config.train.lr=...).")
_CONFIG_OVERRIDES: dict[str, str] = {}   # the --config.a.b=v values, taken out before absl parses
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_KEEP_FREED = flags.DEFINE_bool(
    "keep_freed_host_memory", True,
    "Let glibc malloc reuse freed host memory instead of unmapping it (XLA:CPU's per-step "
    "temporary buffer was otherwise page-faulted anew every step; see BENCHMARKS.md). Costs "
    "resident memory (the process keeps its peak heap).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join("~", ".cache", "xmae_jax", "xla"),
    "Persistent XLA compilation cache ('' = off; JAX_COMPILATION_CACHE_DIR takes precedence): "
    "a rerun or resume skips recompiling the steps.")


def cluster_environment() -> str | None:
  """The multi-host environment JAX can auto-detect here, or None for a single process."""
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "Cloud TPU pod"
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  return None


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           on_peer_lost=None) -> None:
  """Joins the processes of a multi-host run: from the flags, else from the cluster's
  environment; a no-op for a single process. Called from main only, never at import time
  (Grain worker processes re-import modules). `on_peer_lost(status_text)` is called (on a
  runtime thread) when the distributed runtime finds a process gone; without it the runtime
  aborts this process with a C++ fatal error and stack dumps."""
  import jax
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise common.UsageError("--coordinator_address, --num_processes and --process_id go together")
    with _runtime_client_callback(on_peer_lost):
      jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
  elif cluster_environment() is not None:
    with _runtime_client_callback(on_peer_lost):
      jax.distributed.initialize()


@contextlib.contextmanager
def _runtime_client_callback(callback):
  """Within: the distributed runtime client that jax.distributed.initialize makes gets
  `callback` as its missed-heartbeat callback (initialize has no parameter for it)."""
  if callback is None:
    yield
    return
  from jax._src import distributed   # the client factory has no public name
  make_client = distributed._jax.get_distributed_runtime_client

  def with_callback(*args, **kwargs):
    kwargs.setdefault("missed_heartbeat_callback", lambda status, *_: callback(str(status)))
    return make_client(*args, **kwargs)

  distributed._jax.get_distributed_runtime_client = with_callback
  try:
    yield
  finally:
    distributed._jax.get_distributed_runtime_client = make_client


def checkpoint_folder(workdir) -> Path:
  from xmae_jax.training import checkpoint
  return Path(workdir) / checkpoint.CHECKPOINT_DIR


def committed_checkpoints(workdir) -> list[int]:
  """The steps under WORKDIR/checkpoints that Orbax committed (it renames a checkpoint's
  temporary folder to the bare step number once every process has written its part), read
  from the folder: the checkpoint manager would wait for the lost process."""
  folder = checkpoint_folder(workdir)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def lost_peer_message(status: str, process_index: int, process_count: int, workdir) -> str:
  """One line: which process was lost (from the runtime's status) and the intact checkpoint."""
  listed = re.search(r"unhealthy[^:]*:\s*((?:\d+\s*)+)", status)
  if listed:
    lost = sorted({int(t) for t in listed.group(1).split()} - {process_index})
  else:   # the coordination service (process 0) itself is unreachable
    lost = [0] if process_index != 0 else []
  who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {process_count}"
         if lost else f"a peer of {process_count} processes")
  steps = committed_checkpoints(workdir)
  saved = (f"the last checkpoint (step {steps[-1]} in {checkpoint_folder(workdir)}) is intact: rerun the same command "
           "on every process to resume" if steps else "no checkpoint had been written")
  return (f"lost {who} (it stopped answering: killed, crashed or unreachable); process "
          f"{process_index} stopped too; {saved}")


def _exit_on_lost_peer(workdir):
  """The runtime's missed-heartbeat callback: the one line, then exit 1 at once (a clean exit
  would wait minutes at the shutdown barrier for the lost process)."""
  def callback(status: str) -> None:
    from jax._src import distributed
    state = distributed.global_state
    try:
      sys.stdout.flush()
      print(f"{PROG}: error: {lost_peer_message(status, state.process_id, state.num_processes, workdir)}",
            file=sys.stderr, flush=True)
    finally:
      os._exit(1)
  return callback


def _train(argv) -> int:
  """absl's main: flags are parsed; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _WORKDIR.value:
    return common.fail(PROG, "--config and --workdir are required")
  try:   # locked: a key the trainer does not know is an error, not a new field
    config = config_lib.load(_CONFIG.value, _CONFIG_OVERRIDES).lock()
  except XmaeError as e:
    return common.fail(PROG, e)
  if not flags.FLAGS["verbosity"].present:
    # Library INFO lines (Orbax, Grain) would drown the progress line; -v 0 brings them back.
    logging.set_verbosity(logging.WARNING)
  if _KEEP_FREED.value:
    from xmae_jax.training import host_memory
    host_memory.keep_freed_host_memory()   # before JAX's CPU client starts its threads
  import jax
  from xmae_jax.training import train as train_lib
  if _CACHE.value and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_CACHE.value))
  try:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           on_peer_lost=_exit_on_lost_peer(_WORKDIR.value))
    summary = train_lib.train(config, _WORKDIR.value)
  except XmaeError as e:
    return common.fail(PROG, e)
  except jax.errors.JaxRuntimeError:
    if jax.process_count() > 1:
      # A collective that failed because a peer died: the runtime's heartbeat check names it
      # (and exits, see _exit_on_lost_peer) within its timeout; any other error goes on.
      time.sleep(PEER_LOSS_WAIT_S)
    raise
  if jax.process_index() == 0:
    best = summary["best_val_loss"]
    print(f"{PROG}: {summary['status']} at step {summary['step']}/{summary['total_steps']}"
          + (f", best val_loss {best:.5f} (step {summary['best_step']})" if best is not None else "")
          + f"; workdir {summary['workdir']}", flush=True)
  return 143 if summary["status"] == "preempted" else 0


def parse_flags(argv):
  """absl's flag parsing, after config_lib takes the `--config.a.b=v` values out of argv."""
  argv, overrides = config_lib.flag_overrides(argv)
  _CONFIG_OVERRIDES.clear()
  _CONFIG_OVERRIDES.update(overrides)
  return app.parse_flags_with_usage(argv)


def main(argv=None) -> None:
  """Console-script entry point (xmae-train): absl parses `argv` (default sys.argv) and exits
  with _train's status."""
  app.run(_train, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  main()
