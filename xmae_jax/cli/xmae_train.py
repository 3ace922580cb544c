"""xmae-train: pretrain a model config on a prepared dataset directory.

  xmae-train --config configs/xmae.py:demo --workdir runs/demo --config.data.dir data/synthetic
  python -m xmae_jax.cli.xmae_train --config configs/m2ae.py --workdir runs/m2ae --config.train.lr=1e-4

Flags: `--config FILE[:PRESET[,key=value...]]` plus `--config.section.field=value` overrides,
`--workdir` (created; a run there resumes from its latest checkpoint), and for multi-host runs
`--coordinator_address HOST:PORT --num_processes N --process_id I`. Without them, a cluster's
environment is used when present (Cloud TPU pod slices, SLURM with more than one task);
otherwise the run is one process. Bad settings end with one line on stderr and exit status 1;
a run stopped by SIGTERM saves a checkpoint and exits with status 143, by Ctrl-C (SIGINT) the
same with status 130 (a second Ctrl-C stops without saving). A run resumes only with the data
directory, length and batch size it started with, unless `--allow_resume_change KEY` names
the one changed on purpose (e.g. train.num_steps to train longer). In a multi-process run,
when a process dies the others end within about a minute (PeerWatch) with one line
naming the lost process and the last intact checkpoint, and exit status 1.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging

from xmae_jax import config_lib
from xmae_jax import paths
from xmae_jax.cli import common
from xmae_jax.errors import XmaeError

PROG = "xmae-train"
TRAIN_MODULES = ("grain", "tensorboardX")   # setup.py's train extra (h5py: PulseDB input only)

_CONFIG = flags.DEFINE_string(
    "config", None, "Config FILE[:PRESET[,key=value...]], e.g. configs/xmae.py:demo (fields "
    "overridable with --config.train.lr=...).")
_CONFIG_OVERRIDES: dict[str, str] = {}   # the --config.a.b=v values, taken out before absl parses
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_ALLOW_CHANGE = flags.DEFINE_multi_string(
    "allow_resume_change", [],
    "Resume although this setting differs from the run's (repeatable): data.dir, "
    "train.num_steps, train.num_epochs or train.batch_size.")
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


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
  """Joins the processes of a multi-host run: from the flags, else from the cluster's
  environment; a no-op for a single process. Called from main only, never at import time
  (Grain worker processes re-import modules)."""
  import jax
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise common.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
  elif cluster_environment() is not None:
    jax.distributed.initialize()


def committed_checkpoints(workdir) -> list[int]:
  """The steps under WORKDIR/checkpoints that Orbax committed (it renames a checkpoint's
  temporary folder to the bare step number once every process has written its part), read
  from the folder: the checkpoint manager would wait for the lost process."""
  folder = checkpoint_folder(workdir)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def checkpoint_folder(workdir):
  from xmae_jax.training import checkpoint
  return paths.path(workdir) / checkpoint.CHECKPOINT_DIR


def lost_peer_message(lost: list[int], process_index: int, process_count: int, workdir) -> str:
  """One line: which processes were lost, and the last intact checkpoint."""
  steps = committed_checkpoints(workdir)
  saved = (f"the last checkpoint (step {steps[-1]} in {checkpoint_folder(workdir)}) is intact: "
           "rerun the same command on every process to resume" if steps
           else "no checkpoint had been written")
  return (f"lost process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
          f"{process_count} (it stopped answering: killed, crashed or unreachable); process "
          f"{process_index} stopped too; {saved}")


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

  def __init__(self, workdir, *, interval: float = 2.0, lost_after: float = 45.0):
    from jax._src import distributed   # the runtime's client has no public name
    state = distributed.global_state
    self.client, self.me, self.n = state.client, state.process_id, state.num_processes
    self.workdir, self.interval, self.lost_after = workdir, interval, lost_after
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._run, name="xmae-peer-watch", daemon=True)

  @classmethod
  def start(cls, workdir, **kwargs) -> "PeerWatch | None":
    import jax
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
    except Exception:   # pylint: disable=broad-except  (the store is gone with process 0)
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
      except Exception:   # pylint: disable=broad-except  (the coordinator does not answer)
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
    except Exception as e:   # pylint: disable=broad-except
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None          # not started yet
      raise

  def _exit(self, lost: list[int]) -> None:
    try:
      sys.stdout.flush()
      print(f"{PROG}: error: {lost_peer_message(lost, self.me, self.n, self.workdir)}",
            file=sys.stderr, flush=True)
    finally:
      os._exit(1)


def _train(argv) -> int:
  """absl's main: flags are parsed; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _WORKDIR.value:
    return common.fail(PROG, "--config and --workdir are required")
  missing = common.missing_modules(TRAIN_MODULES)
  if missing:   # an inference-only install (`pip install xmae-jax`)
    return common.fail(PROG, f"training needs {', '.join(missing)}: pip install 'xmae-jax[train]'")
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
  watch = None
  try:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    watch = PeerWatch.start(_WORKDIR.value)
    summary = train_lib.train(config, _WORKDIR.value, allow_changes=_ALLOW_CHANGE.value)
  except XmaeError as e:
    return common.fail(PROG, e)
  except KeyboardInterrupt:   # Ctrl-C before the loop (or twice): nothing new was saved
    common.fail(PROG, "interrupted (SIGINT) before a checkpoint could be saved; the workdir "
                "keeps the checkpoints written before")
    return 130
  except jax.errors.JaxRuntimeError:
    if watch is not None:
      # Most likely a collective that failed because a peer died: the watch names it and
      # exits within its bound; any other error goes on after that.
      time.sleep(watch.lost_after + 4 * watch.interval)
    raise
  finally:
    if watch is not None:
      watch.stop()
  if jax.process_index() == 0:
    best = summary["best_val_loss"]
    print(f"{PROG}: {summary['status']} at step {summary['step']}/{summary['total_steps']}"
          + (f", best val_loss {best:.5f} (step {summary['best_step']})" if best is not None else "")
          + f"; workdir {summary['workdir']}", flush=True)
  if summary["status"] == "preempted":
    return 130 if summary["signal"] == "SIGINT" else 143
  return 0


_OWN_FLAGS = (_CONFIG, _WORKDIR, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _KEEP_FREED, _CACHE)


def help_text() -> str:
  """--help: the tool's own flags with their defaults (absl's --help lists none here and exits
  1), then the module docstring; `--helpfull` still lists absl's own flags."""
  lines = [f"usage: {PROG} --config FILE[:PRESET[,key=value...]] --workdir DIR "
           "[--config.SECTION.FIELD=VALUE ...] [flags]", "", __doc__.strip().split("\n")[0], "",
           "flags:"]
  for holder in _OWN_FLAGS:
    flag = flags.FLAGS[holder.name]
    default = "" if flag.default is None else f" (default: {flag.default!r})"
    lines.append(f"  --{flag.name}: {flag.help}{default}")
  lines += ["  --config.SECTION.FIELD=VALUE: override one config field (repeatable)",
            "  --version: print the version and exit",
            "  --helpfull: also absl's own flags (logging, verbosity)", "",
            __doc__.strip().split("\n", 1)[1].strip("\n")]
  return "\n".join(lines)


def parse_flags(argv):
  """absl's flag parsing, after config_lib takes the `--config.a.b=v` values out of argv;
  --help/-h and --version answer here and exit 0."""
  words = list(argv[1:])
  if "--version" in words:
    print(common.version_line())
    sys.exit(0)
  if "--help" in words or "-h" in words:
    print(help_text())
    sys.exit(0)
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
