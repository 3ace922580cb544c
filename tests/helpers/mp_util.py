"""Run N local Python processes joined with `jax.distributed` on CPU, for multi-process tests
(and `run_python`: one fresh process on this checkout).

Parent side (in a test):

    from tests.helpers.mp_util import run_processes
    results = run_processes(SCRIPT, num_processes=2, devices_per_process=2,
                            args=[str(tmp_path)], timeout=180)
    results[0].result   # the object process 0 passed to `emit`

`SCRIPT` is Python source (a string) or the path of a script. Every process gets the same
command line plus its own environment: a free coordinator port (portpicker), its index, the
process count, `JAX_PLATFORMS=cpu`, `--xla_force_host_platform_device_count=D` added to the
caller's `XLA_FLAGS`, and `PYTHONPATH` with the repository (so scripts can
`from tests.helpers import mp_util`); the rest of the environment is the parent's, so the test
run's compilation cache (tests/conftest.py) is shared. If any process fails or the timeout
passes, all are killed and `MultiProcessError` says which one failed, with the tail of its
output.

Child side (in the script):

    from tests.helpers import mp_util
    mp_util.initialize()          # absl flags marked parsed + jax.distributed.initialize(...)
    ...
    mp_util.emit({"rows": [...]}) # one JSON-able object back to the parent

`initialize` must run before any other JAX call. Scripts that launch Grain worker processes
must keep their work under `if __name__ == "__main__":` (workers re-import the main module).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "MP_UTIL_RESULT "
# XLA's fast-compile options (LLVM -O0, no expensive passes) for test subprocesses that run a few
# steps and compare runs with each other, never with the reference: compiling dominates them.
FAST_COMPILE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
_ENV_COORDINATOR = "MP_UTIL_COORDINATOR"
_ENV_NUM = "MP_UTIL_NUM_PROCESSES"
_ENV_INDEX = "MP_UTIL_PROCESS_INDEX"


class MultiProcessError(RuntimeError):
  """A child process failed, printed no result, or ran past the timeout."""


@dataclasses.dataclass
class ProcessResult:
  index: int
  returncode: int
  stdout: str
  stderr: str
  result: Any  # what the process passed to `emit` (None if it emitted nothing)


# ----------------------------------------------------------------------------- parent side


def run_python(args, **kwargs) -> subprocess.CompletedProcess:
  """One fresh Python process on this checkout's code (CPU only), run to its end."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
      [sys.executable, *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      **kwargs,
  )


def run_processes(
    script: str | os.PathLike,
    num_processes: int,
    *,
    args: Sequence[str] = (),
    devices_per_process: int = 1,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    require_result: bool = True,
) -> list[ProcessResult]:
  """Starts `num_processes` copies of `script`, waits for all, returns their results in order.

  Args:
    script: Python source, or the path of a .py file.
    num_processes: how many processes (joined as one jax.distributed job).
    args: command-line arguments given to every process.
    devices_per_process: CPU devices per process (XLA host platform device count).
    timeout: seconds for the whole group; then every process is killed.
    env: extra environment variables (override the defaults).
    require_result: raise if a process exits 0 without calling `emit`.
  """
  import portpicker  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  with tempfile.TemporaryDirectory(prefix="mp_util_") as tmp:
    path = Path(script) if _is_path(script) else Path(tmp) / "script.py"
    if not _is_path(script):
      path.write_text(str(script))
    procs = []
    try:
      for i in range(num_processes):
        procs.append(
            subprocess.Popen(
                [sys.executable, str(path), *map(str, args)],
                env=_child_env(i, num_processes, port, devices_per_process, env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(REPO),
                start_new_session=True,
            )
        )
      outputs, first_failure = _wait_all(procs, timeout)
    finally:
      for p in procs:
        _kill(p)
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
      results.append(ProcessResult(i, p.returncode, out, err, _parse_result(out)))
    # Report the process that failed by itself, not those stopped because of it.
    for r in ([results[first_failure]] if first_failure is not None else []) + results:
      if r.returncode != 0 or (require_result and r.result is None):
        why = f"exit code {r.returncode}" if r.returncode != 0 else "no result emitted"
        stopped = " (the others were stopped)" if first_failure is not None else ""
        raise MultiProcessError(
            f"process {r.index}/{num_processes} failed ({why}){stopped}:\n"
            f"--- stderr tail ---\n{r.stderr[-4000:]}\n"
            f"--- stdout tail ---\n{r.stdout[-2000:]}"
        )
    return results


def _is_path(script) -> bool:
  return isinstance(script, os.PathLike) or (
      isinstance(script, str) and "\n" not in script and script.endswith(".py")
  )


def _child_env(
    index: int, num: int, port: int, devices: int, extra: dict[str, str] | None
) -> dict[str, str]:
  env = dict(os.environ)
  path = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env.update(
      {
          "PYTHONPATH": os.pathsep.join(path),
          "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
          _ENV_COORDINATOR: f"127.0.0.1:{port}",
          _ENV_NUM: str(num),
          _ENV_INDEX: str(index),
      }
  )
  env.update(extra or {})
  return env


def _wait_all(
    procs: list[subprocess.Popen], timeout: float
) -> tuple[list[tuple[str, str]], int | None]:
  """Collects every process's (stdout, stderr) and the index of the first one that failed.

  Kills the whole group at the deadline, or as soon as one process exits non-zero.
  """
  deadline = time.monotonic() + timeout
  outputs: list[tuple[str, str] | None] = [None] * len(procs)
  first_failure = None
  while any(o is None for o in outputs):
    for i, p in enumerate(procs):
      if outputs[i] is not None:
        continue
      try:
        outputs[i] = p.communicate(timeout=0.2)
      except subprocess.TimeoutExpired:
        continue
      if p.returncode != 0 and first_failure is None:
        first_failure = i  # the others would hang in a collective: stop them
        for q in procs:
          _kill(q)
    if time.monotonic() > deadline:
      for p in procs:
        _kill(p)
      tails = []
      for i, p in enumerate(procs):
        out, err = outputs[i] or p.communicate()
        tails.append(f"--- process {i} stderr tail ---\n{err[-1500:]}")
      raise MultiProcessError(
          f"{len(procs)} processes did not finish within {timeout:.0f} s\n" + "\n".join(tails)
      )
  return outputs, first_failure  # type: ignore[return-value]


def _kill(p: subprocess.Popen) -> None:
  """Kills the process and its own children (Grain workers): it leads its own process group."""
  if p.poll() is None:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    p.wait()


def _parse_result(stdout: str) -> Any:
  for line in reversed(stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX) :])
  return None


# ----------------------------------------------------------------------------- child side


def process_index() -> int:
  return int(os.environ[_ENV_INDEX])


def num_processes() -> int:
  return int(os.environ[_ENV_NUM])


def initialize(timeout_s: int = 120) -> None:
  """In a child: marks absl flags parsed (Grain reads them) and joins the jax.distributed job."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      os.environ[_ENV_COORDINATOR],
      num_processes(),
      process_index(),
      initialization_timeout=timeout_s,
  )


def emit(obj: Any) -> None:
  """In a child: sends one JSON-able object back to the parent (the last call wins)."""
  print(RESULT_PREFIX + json.dumps(obj), flush=True)
