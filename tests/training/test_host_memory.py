"""`host_memory.keep_freed_host_memory`: a large block freed and allocated again is reused instead
of being unmapped and page-faulted anew (what XLA:CPU's per-step temporary buffer went through).
Each case runs in a fresh process, since the setting is process-wide."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import ctypes, ctypes.util, json, resource, sys, threading
from xmae_jax.training import host_memory
tuned = host_memory.keep_freed_host_memory() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 50_000_000, []     # 50 MB: above glibc's largest dynamic mmap threshold

def steps():                      # in a worker thread, as XLA:CPU allocates its buffers
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _run(mode):
  out = subprocess.run(
      [sys.executable, "-c", PROGRAM, mode],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  ).stdout
  return json.loads(out.splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc malloc tuning is Linux-only")
  tuned, default = _run("tuned"), _run("default")
  if not tuned["tuned"]:
    pytest.skip("not glibc")
  pages = 50_000_000 // 4096
  assert min(default["faults"][1:]) > pages // 2  # default: every allocation faults again
  assert max(tuned["faults"][1:]) < pages // 20  # tuned: the freed block is reused
