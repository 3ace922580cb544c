"""One process of a training job as `xmae-train` runs it: the process settings, the processes
joined, `train()` under the peer watch, and the exit status.

Importing this module does not import JAX: `run` first lets glibc malloc keep freed host memory
(`host_memory`, which must precede the threads of JAX's CPU client), then imports the training
modules, so a tool can check its install and settings before JAX loads.
"""

from __future__ import annotations

import os
from typing import Sequence

from xmae_jax.training import host_memory


def exit_status(summary: dict) -> int:
  """The exit status of a run that ended with `summary` (`train()`'s): 0, or for a run stopped
  by a signal (its checkpoint saved) 128 + the signal's number: 130 for SIGINT, 143 for
  SIGTERM."""
  if summary["status"] == "preempted":
    return 130 if summary["signal"] == "SIGINT" else 143
  return 0


def run(
    config,
    workdir,
    *,
    prog: str = "xmae-train",
    allow_changes: Sequence[str] = (),
    keep_freed_host_memory: bool = True,
    compilation_cache: str = "",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, str | None]:
  """Trains `config` in `workdir` as this process of the job: (exit status, the run's one-line
  summary for the user, None on processes other than 0).

  `compilation_cache`: the persistent XLA compilation cache folder ('' = off; the
  JAX_COMPILATION_CACHE_DIR environment variable takes precedence). Raises `XmaeError` on a
  setting or state that stops the run, KeyboardInterrupt on Ctrl-C before the loop."""
  if keep_freed_host_memory:
    host_memory.keep_freed_host_memory()
  # JAX, and the training modules that import it, only now: after the malloc setting (before
  # the threads of JAX's CPU client) and after the calling tool's own checks.
  import jax

  from xmae_jax.training import distributed
  from xmae_jax.training import train as train_lib

  # jax.config holds its flags as attributes that mypy does not see.
  if compilation_cache and not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
  distributed.initialize(coordinator_address, num_processes, process_id)
  with distributed.watching(workdir, prog=prog):
    summary = train_lib.train(config, workdir, allow_changes=tuple(allow_changes))
  line = f"{prog}: {train_lib.describe(summary)}" if jax.process_index() == 0 else None
  return exit_status(summary), line
