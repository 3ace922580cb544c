"""Patch masks for masked reconstruction, as the xMAE reference draws them, with static shapes.

Conventions (the reference's `_make_patch_mask` / `_ids_from_patch_mask`):
* A patch mask is (N,) or (B, N) with 1 = masked, 0 = kept (visible).
* The masked count is k = round(ratio * N) with Python's round (banker's: 0.9 * 25 = 22.5 -> 22),
  clamped to [0, N]; the kept count Nk = N - k is a static Python int, so shapes are fixed under
  `jit` by the ratio alone. A new ratio (the curriculum's next level) is a new shape.
* `ids_keep` (B, Nk) lists kept patch indices in ascending order; `ids_restore` (B, N) is the
  inverse of the permutation "kept ascending, then masked ascending" (standard MAE).
* Masks are drawn independently per example from a JAX key: `sample_keep_ids(key, B, ...)` uses
  `jax.random.split(key, B)`, so the same key gives the same masks.

Modes:
  anchor   one contiguous VISIBLE run of Nk patches at a uniform random start (the default).
  block    one contiguous MASKED run of k patches at a uniform random start.
  scatter  k patches chosen uniformly without replacement.
  mixed    per example, block or scatter with probability 1/2 each.
The reference silently falls back to anchor for an unknown mode; here it is an error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xmae_jax.errors import XmaeError

MODES = ("anchor", "block", "scatter", "mixed")


class MaskingError(XmaeError):
  """A mask setting (mode, ratio) that cannot be drawn."""


def num_masked(ratio: float, num_patches: int) -> int:
  """Masked patch count k = round(ratio * N) (Python/banker's rounding), clamped to [0, N]."""
  if not 0.0 <= ratio <= 1.0:
    raise MaskingError(f"mask ratio {ratio} is outside [0, 1]")
  return max(0, min(num_patches, int(round(ratio * num_patches))))


def num_kept(ratio: float, num_patches: int) -> int:
  return num_patches - num_masked(ratio, num_patches)


def check_mode(mode: str) -> str:
  """`mode` if it is one of MODES; else the one error every model and sampler raises for it."""
  if mode not in MODES:
    raise MaskingError(
        f"unknown mask mode {mode!r} (masking.mode); expected one of {', '.join(MODES)}"
    )
  return mode


def _run_mask(key: jax.Array, num_patches: int, run: int, value_in_run: int) -> jax.Array:
  """(N,) int32: `value_in_run` on a run of `run` patches at a uniform start, the other value
  elsewhere."""
  start = jax.random.randint(key, (), 0, num_patches - run + 1)
  idx = jnp.arange(num_patches)
  in_run = (idx >= start) & (idx < start + run)
  return jnp.where(in_run, value_in_run, 1 - value_in_run).astype(jnp.int32)


def _scatter_mask(key: jax.Array, num_patches: int, k: int) -> jax.Array:
  chosen = jnp.argsort(jax.random.uniform(key, (num_patches,)))[:k]
  return jnp.zeros((num_patches,), jnp.int32).at[chosen].set(1)


def patch_mask(key: jax.Array, num_patches: int, ratio: float, mode: str = "anchor") -> jax.Array:
  """One example's patch mask (N,) int32, 1 = masked, with exactly num_masked(ratio, N) ones."""
  check_mode(mode)
  k = num_masked(ratio, num_patches)
  if k == 0:
    return jnp.zeros((num_patches,), jnp.int32)
  if k == num_patches:
    return jnp.ones((num_patches,), jnp.int32)
  if mode == "anchor":
    return _run_mask(key, num_patches, num_patches - k, 0)
  if mode == "block":
    return _run_mask(key, num_patches, k, 1)
  if mode == "scatter":
    return _scatter_mask(key, num_patches, k)
  k_choice, k_block, k_scatter = jax.random.split(key, 3)
  return jnp.where(
      jax.random.bernoulli(k_choice),
      _run_mask(k_block, num_patches, k, 1),
      _scatter_mask(k_scatter, num_patches, k),
  )


def _sorted_ids(mask: jax.Array) -> jax.Array:
  """Kept indices ascending, then masked ascending (the reference's argsort of idx + mask*N)."""
  n = mask.shape[-1]
  return jnp.argsort(jnp.arange(n) + mask.astype(jnp.int32) * n, axis=-1)


def keep_ids(mask: jax.Array, nk: int) -> jax.Array:
  """(..., N) mask -> (..., Nk) ascending kept indices (the mask must keep exactly nk)."""
  return _sorted_ids(mask)[..., :nk].astype(jnp.int32)


def mask_from_keep(ids_keep: jax.Array, num_patches: int) -> jax.Array:
  """(B, Nk) kept indices -> (B, N) int32 patch mask, 1 = masked."""
  kept = jnp.zeros(ids_keep.shape[:-1] + (num_patches,), jnp.int32)
  kept = jax.vmap(lambda z, i: z.at[i].set(1))(
      kept.reshape(-1, num_patches), ids_keep.reshape(-1, ids_keep.shape[-1])
  )
  return (1 - kept).reshape(ids_keep.shape[:-1] + (num_patches,))


def restore_ids(ids_keep: jax.Array, num_patches: int) -> jax.Array:
  """(B, Nk) ascending kept indices -> ids_restore (B, N)."""
  return jnp.argsort(_sorted_ids(mask_from_keep(ids_keep, num_patches)), axis=-1).astype(jnp.int32)


def sample_mask(ids_keep: jax.Array, num_patches: int, patch_len: int) -> jax.Array:
  """Sample-level mask (B, N * P) float32, 1 on masked samples (each patch repeated P times)."""
  m = mask_from_keep(ids_keep, num_patches).astype(jnp.float32)
  return jnp.repeat(m, patch_len, axis=-1)


def sample_keep_ids(
    key: jax.Array, batch: int, num_patches: int, ratio: float, mode: str = "anchor"
) -> jax.Array:
  """(B, Nk) ascending kept indices, one independent mask per example from `key`."""
  check_mode(mode)
  nk = num_kept(ratio, num_patches)
  masks = jax.vmap(lambda k: patch_mask(k, num_patches, ratio, mode))(jax.random.split(key, batch))
  return keep_ids(masks, nk)
