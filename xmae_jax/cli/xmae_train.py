"""xmae-train: pretrain a model config on a prepared dataset directory.

  xmae-train --config configs/xmae.py:demo --workdir runs/demo --config.data.dir data/synthetic
  python -m xmae_jax.cli.xmae_train --config configs/m2ae.py --workdir runs/m2ae \
      --config.train.lr=1e-4

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

from absl import app
from absl import flags
from absl import logging

from xmae_jax import config_lib
from xmae_jax.cli import common
from xmae_jax.errors import XmaeError
from xmae_jax.training import host_memory

PROG = "xmae-train"
TRAIN_MODULES = ("grain", "tensorboardX")  # setup.py's train extra (h5py: PulseDB input only)

_CONFIG = flags.DEFINE_string(
    "config",
    None,
    "Config FILE[:PRESET[,key=value...]], e.g. configs/xmae.py:demo (fields "
    "overridable with --config.train.lr=...).",
)
_CONFIG_OVERRIDES: dict[str, str] = {}  # the --config.a.b=v values, taken out before absl parses
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes)."
)
_ALLOW_CHANGE = flags.DEFINE_multi_string(
    "allow_resume_change",
    [],
    "Resume although this setting differs from the run's (repeatable): data.dir, "
    "train.num_steps, train.num_epochs or train.batch_size.",
)
_KEEP_FREED = flags.DEFINE_bool(
    "keep_freed_host_memory",
    True,
    "Let glibc malloc reuse freed host memory instead of unmapping it (XLA:CPU's per-step "
    "temporary buffer was otherwise page-faulted anew every step; see BENCHMARKS.md). Costs "
    "resident memory (the process keeps its peak heap).",
)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.path.join("~", ".cache", "xmae_jax", "xla"),
    "Persistent XLA compilation cache ('' = off; JAX_COMPILATION_CACHE_DIR takes precedence): "
    "a rerun or resume skips recompiling the steps.",
)


def _train(argv) -> int:
  """absl's main: flags are parsed; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _WORKDIR.value:
    return common.fail(PROG, "--config and --workdir are required")
  missing = common.missing_modules(TRAIN_MODULES)
  if missing:  # an inference-only install (`pip install xmae-jax`)
    return common.fail(PROG, f"training needs {', '.join(missing)}: pip install 'xmae-jax[train]'")
  try:  # locked: a key the trainer does not know is an error, not a new field
    config = config_lib.load(_CONFIG.value, _CONFIG_OVERRIDES).lock()
  except XmaeError as e:
    return common.fail(PROG, e)
  if not flags.FLAGS["verbosity"].present:
    # Library INFO lines (Orbax, Grain) would drown the progress line; -v 0 brings them back.
    logging.set_verbosity(logging.WARNING)
  if _KEEP_FREED.value:
    host_memory.keep_freed_host_memory()
  # Imported here, not at the top: JAX (the training modules import it) comes after the checks
  # above, so an inference-only install fails with one line, and after the malloc setting,
  # which must precede the threads of JAX's CPU client.
  import jax

  from xmae_jax.training import distributed
  from xmae_jax.training import train as train_lib
  # jax.config holds its flags as attributes that mypy does not see.
  if _CACHE.value and not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_CACHE.value))
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    with distributed.watching(_WORKDIR.value, prog=PROG):
      summary = train_lib.train(config, _WORKDIR.value, allow_changes=_ALLOW_CHANGE.value)
  except XmaeError as e:
    return common.fail(PROG, e)
  except KeyboardInterrupt:  # Ctrl-C before the loop (or twice): nothing new was saved
    common.fail(
        PROG,
        "interrupted (SIGINT) before a checkpoint could be saved; the workdir "
        "keeps the checkpoints written before",
    )
    return 130
  if jax.process_index() == 0:
    print(f"{PROG}: {train_lib.describe(summary)}", flush=True)
  if summary["status"] == "preempted":
    return 130 if summary["signal"] == "SIGINT" else 143
  return 0


_OWN_FLAGS = (_CONFIG, _WORKDIR, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _KEEP_FREED, _CACHE)


def help_text() -> str:
  """--help: the tool's own flags with their defaults (absl's --help lists none here and exits
  1), then the module docstring; `--helpfull` still lists absl's own flags."""
  lines = [
      f"usage: {PROG} --config FILE[:PRESET[,key=value...]] --workdir DIR "
      "[--config.SECTION.FIELD=VALUE ...] [flags]",
      "",
      __doc__.strip().split("\n")[0],
      "",
      "flags:",
  ]
  for holder in _OWN_FLAGS:
    flag = flags.FLAGS[holder.name]
    default = "" if flag.default is None else f" (default: {flag.default!r})"
    lines.append(f"  --{flag.name}: {flag.help}{default}")
  lines += [
      "  --config.SECTION.FIELD=VALUE: override one config field (repeatable)",
      "  --version: print the version and exit",
      "  --helpfull: also absl's own flags (logging, verbosity)",
      "",
      __doc__.strip().split("\n", 1)[1].strip("\n"),
  ]
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
