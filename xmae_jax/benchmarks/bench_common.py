"""Shared pieces of the benchmarks: timing, memory, the PyTorch matmul peak, JSON lines.

Every benchmark prints one JSON line per measurement. Peak and MFU are measured in the same
process run as the thing they describe, because numbers differ between machines of the same kind
(and, on a shared machine, between minutes): only ratios taken within one run are comparable.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Sequence

import jax

from xmae_jax import errors
from xmae_jax.training import host_memory
from xmae_jax.training import perf


def add_host_memory_flag(parser) -> None:
  """`--default-malloc`, shared by `bench train` and `bench reference`."""
  parser.add_argument(
      "--default-malloc",
      action="store_true",
      help="leave glibc malloc as it is (by default freed memory is kept for "
      "reuse, which saves re-faulting XLA's per-step temporary buffer)",
  )


def apply_host_memory_flag(args) -> bool:
  """Keeps freed host memory unless `--default-malloc`; call before JAX starts its threads
  (see training/host_memory.py). Returns whether the setting is in effect (for the record)."""
  return not args.default_malloc and host_memory.keep_freed_host_memory()


def emit(record: dict, stream=None) -> None:
  """Prints `record` as one JSON line (the output contract of every bench command)."""
  stream = stream or sys.stdout
  stream.write(json.dumps(record, sort_keys=False, default=_json_default) + "\n")
  stream.flush()


def _json_default(value):
  if hasattr(value, "item"):
    return value.item()
  if isinstance(value, (set, tuple)):
    return list(value)
  return str(value)


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def time_calls(
    fn: Callable[[], object],
    sync: Callable[[object], object],
    count: int,
    cpu_times: list[float] | None = None,
) -> list[float]:
  """Wall seconds of `count` calls of `fn`, each synchronized with `sync(result)`.

  `cpu_times`, when given, receives the process CPU seconds (all threads) of each call: on a
  machine shared with other jobs, CPU time measures the work done and wall time what is left of
  the machine.
  """
  times = []
  for _ in range(count):
    start, cpu = time.perf_counter(), time.process_time()
    sync(fn())
    times.append(time.perf_counter() - start)
    if cpu_times is not None:
      cpu_times.append(time.process_time() - cpu)
  return times


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def machine_info() -> dict:
  """What a reader needs to judge a number: CPU, cores, load, library versions, flags."""
  info = {
      "host_cpu": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpu_flags": _cpu_vector_flags(),
      "loadavg_1m": round(os.getloadavg()[0], 2),
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  info["jax"] = jax.__version__
  info["backend"] = jax.default_backend()
  info["devices"] = jax.device_count()
  return info


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _cpu_vector_flags() -> str:
  wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          have = set(line.split(":", 1)[1].split())
          return " ".join(w for w in wanted if w in have)
  except OSError:
    pass
  return ""


def torch_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """Best achieved FLOP/s of an n^3 matmul in PyTorch (CPU); needs the optional torch extra."""
  torch = import_torch()
  gen = torch.Generator().manual_seed(0)
  torch_dtype = getattr(torch, dtype)
  a = torch.randn(n, n, generator=gen).to(torch_dtype)
  b = torch.randn(n, n, generator=gen).to(torch_dtype)
  torch.matmul(a, b)
  times = time_calls(lambda: torch.matmul(a, b), lambda r: r, repeats)
  return perf.matmul_flops(n) / min(times)


class MissingExtraError(errors.XmaeError):
  """An optional extra a benchmark needs is not installed."""


def import_torch():
  """torch is an optional extra (`pip install xmae-jax[torch]`): fail with one clear line."""
  try:
    # torch is an optional extra: its absence is the one line below.
    import torch
  except ImportError as err:
    raise MissingExtraError(
        "this benchmark needs PyTorch (CPU build): pip install 'xmae-jax[torch]' "
        f"(import failed: {err})"
    ) from err
  return torch


def exit_with(message: str) -> None:
  """CLI error contract: one line on stderr, non-zero exit."""
  sys.stderr.write(f"error: {message}\n")
  sys.exit(2)
