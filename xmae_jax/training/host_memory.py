"""Host memory settings for XLA:CPU training and benchmarking processes.

`keep_freed_host_memory()` is called by `xmae-train` (flag `--keep_freed_host_memory`, on by
default) and by `bench train` / `bench reference` (`--default-malloc` turns it off).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_host_memory() -> bool:
  """Makes glibc malloc keep and reuse freed memory instead of returning it to the kernel.

  XLA:CPU allocates one large temporary buffer per execution of a compiled program. glibc
  serves such a block with a fresh mmap and unmaps it when the step ends, so every step
  page-faults the whole buffer again, in kernel time (measured in BENCHMARKS.md). With every
  thread on the main arena, no mmap for large blocks and no trimming, the block is reused from
  the heap.
  The process keeps its peak heap (it needs it every step anyway).

  Call it before JAX starts its CPU client (the threads bind to a malloc arena on their first
  allocation). The allocator is process-wide, so in `bench reference` PyTorch gets the same
  treatment. Returns False (and changes nothing) where the C library is not glibc.
  """
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # -1 is read as SIZE_MAX by glibc's size_t trim threshold: never trim.
  return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, -1)])
