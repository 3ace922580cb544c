"""Integrity of saved arrays: digests, and one answer agreed by every process.

Orbax/TensorStore read damaged data without complaint (a byte flip changes a weight, 0xFF bytes
become NaN), so a checkpoint's meta holds a digest of every saved array (`digests`) and every
restore recomputes them (`first_difference`). With several processes each process hashes the
shards it holds (the digest is a sum that XLA reduces across processes), and every pass/fail
decision goes through `all_processes`, so they all fall back to the same step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def _fmix32(x):
  """MurmurHash3's 32-bit finalizer: every input bit flips about half of the output bits."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _words(x):
  """The array's bytes as uint32 words, shape x.shape + (words per element,)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = jnp.dtype(x.dtype).itemsize
  if size >= 4:
    w = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    w = jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  return w if w.ndim > x.ndim else w[..., None]


_LANES = (0x9E3779B9, 0x7F4A7C15)  # two independent 32-bit sums: a 64-bit digest


def _leaf_digest(x):
  """Sum over words of hash(word, position), mod 2^32, per lane.

  A sum of per-word hashes is exact and order independent, so XLA can reduce it shard by shard
  (each device hashes what it holds, then the partial sums are added across devices and
  processes) and the value does not depend on the sharding the array was saved or restored with.
  The position enters the hash, so moved or swapped values change it too.
  """
  w = _words(x)
  pos = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(w.ndim)):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride % 2**32)
    stride *= w.shape[d]
  return jnp.stack(
      [jnp.sum(_fmix32(w ^ _fmix32(pos ^ jnp.uint32(lane))), dtype=jnp.uint32) for lane in _LANES]
  )


_tree_digest = jax.jit(lambda tree: jax.tree.map(_leaf_digest, tree))


def digests(flat: dict[str, Any]) -> dict[str, list]:
  """{name: [dtype, shape, hex digest]} of a flat item; every process must call it (a
  collective when arrays span processes) and gets the same result."""
  sums = jax.device_get(_tree_digest({k: v for k, v in flat.items()}))
  return {
      k: [str(np.dtype(v.dtype)), list(v.shape), "".join(f"{int(x):08x}" for x in sums[k])]
      for k, v in flat.items()
  }


def first_difference(restored: dict, saved: dict) -> str | None:
  """'ITEM array NAME' for the first restored array (of the items "model" and "opt") whose
  digest differs from the one `saved` ({item: digests}) holds; None when all agree. Arrays
  restored to another dtype or shape than saved cannot be compared byte for byte and are left
  out, as are items saved without digests. Every process must call it."""
  bad = None
  for item in ("model", "opt"):
    if item not in restored or item not in saved:
      continue
    flat = {
        k: v
        for k, v in restored[item].items()
        if k in saved[item] and [str(np.dtype(v.dtype)), list(v.shape)] == saved[item][k][:2]
    }
    got = digests(flat)
    bad = bad or next(
        (f"{item} array {k!r}" for k in sorted(got) if got[k] != saved[item][k]), None
    )
  return bad


def all_processes(ok: bool) -> bool:
  """True on every process when `ok` is true on every process (the same answer everywhere)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array([int(ok)], np.int32))
  return bool(np.min(flags))


def rejoin_restore_barrier() -> None:
  """Orbax ends every restore with a barrier across processes ('Checkpointer:restore'). A
  process whose read failed (its shards damaged) skipped it and would pair its next collective
  with the others' barrier; it joins that barrier here, so the processes stay in step and agree
  on the outcome. (Orbax checks the barrier's name, so a rename there fails loudly here.)"""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(ocp.multihost.unique_barrier_key("Checkpointer:restore"))
