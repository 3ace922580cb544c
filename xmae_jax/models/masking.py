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

`LadderCurriculum` moves the ECG ratio 0.80 -> 0.85 -> 0.90 on the smoothed validation loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

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
        f"unknown mask mode {mode!r} (masking.mode); expected one of {', '.join(MODES)}")
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


def patch_mask(key: jax.Array, num_patches: int, ratio: float, mode: str = "anchor"
               ) -> jax.Array:
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
  return jnp.where(jax.random.bernoulli(k_choice), _run_mask(k_block, num_patches, k, 1),
                   _scatter_mask(k_scatter, num_patches, k))


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
  kept = jax.vmap(lambda z, i: z.at[i].set(1))(kept.reshape(-1, num_patches),
                                               ids_keep.reshape(-1, ids_keep.shape[-1]))
  return (1 - kept).reshape(ids_keep.shape[:-1] + (num_patches,))


def restore_ids(ids_keep: jax.Array, num_patches: int) -> jax.Array:
  """(B, Nk) ascending kept indices -> ids_restore (B, N)."""
  return jnp.argsort(_sorted_ids(mask_from_keep(ids_keep, num_patches)), axis=-1).astype(
      jnp.int32)


def sample_mask(ids_keep: jax.Array, num_patches: int, patch_len: int) -> jax.Array:
  """Sample-level mask (B, N * P) float32, 1 on masked samples (each patch repeated P times)."""
  m = mask_from_keep(ids_keep, num_patches).astype(jnp.float32)
  return jnp.repeat(m, patch_len, axis=-1)


def sample_keep_ids(key: jax.Array, batch: int, num_patches: int, ratio: float,
                    mode: str = "anchor") -> jax.Array:
  """(B, Nk) ascending kept indices, one independent mask per example from `key`."""
  check_mode(mode)
  nk = num_kept(ratio, num_patches)
  masks = jax.vmap(lambda k: patch_mask(k, num_patches, ratio, mode))(
      jax.random.split(key, batch))
  return keep_ids(masks, nk)


# ----------------------------------------------------------------------------------------------
# Ladder curriculum.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LadderCurriculum:
  """Loss-driven ladder over mask ratios, as the reference's declared (never wired) state implies.

  The reference declares: levels [0.80, 0.85, 0.90] (min 0.8, max 0.9, step 0.05), an EMA of
  the validation masked-ECG loss with beta 0.8, an absolute start threshold 0.09, promotion on a
  >= 10% relative EMA improvement since the level was entered, patience 1 (consecutive passing
  evaluations), and at least 3 evaluations (`epochs_per_level`) per level. It never increments
  its level; this class is the rule those fields describe:

  * every evaluation: ema = x (first) or beta * ema + (1 - beta) * x;
  * until the EMA first falls below `start_below`, stay on level 0 ("not started");
  * the evaluation where it does starts level 0: entry_ema = ema, one evaluation at the level;
  * later evaluations count toward the level; an evaluation passes when
    ema <= (1 - rel_improve) * entry_ema; after `patience` consecutive passes and
    `min_evals` evaluations at the level, move up (entry_ema = ema, counters reset);
  * the last level is kept.

  `ratio` is the current level; `update(val_loss)` returns the ratio to use next. The state is a
  small JSON-able dict (`state_dict` / `load_state_dict`) to store in checkpoints. Each level is
  a different static kept count, so the step function recompiles once per level.
  """

  levels: Sequence[float] = (0.8, 0.85, 0.9)
  beta: float = 0.8
  start_below: float = 0.09
  rel_improve: float = 0.10
  patience: int = 1
  min_evals: int = 3
  level: int = 0
  ema: float | None = None
  entry_ema: float | None = None
  evals_at_level: int = 0
  streak: int = 0
  started: bool = False

  @classmethod
  def from_config(cls, masking_config) -> "LadderCurriculum":
    return cls(levels=tuple(masking_config.curriculum_levels),
               beta=masking_config.curriculum_ema,
               start_below=masking_config.curriculum_start_below,
               rel_improve=masking_config.curriculum_rel_improve,
               patience=masking_config.get("curriculum_patience", 1),
               min_evals=masking_config.curriculum_min_evals)

  @property
  def ratio(self) -> float:
    return float(self.levels[self.level])

  def update(self, val_loss: float) -> float:
    x = float(val_loss)
    self.ema = x if self.ema is None else self.beta * self.ema + (1.0 - self.beta) * x
    if not self.started:
      if self.ema < self.start_below:
        self.started, self.entry_ema, self.evals_at_level = True, self.ema, 1
      return self.ratio
    self.evals_at_level += 1
    passed = self.ema <= (1.0 - self.rel_improve) * self.entry_ema
    self.streak = self.streak + 1 if passed else 0
    if (self.streak >= self.patience and self.evals_at_level >= self.min_evals
        and self.level < len(self.levels) - 1):
      self.level += 1
      self.entry_ema, self.evals_at_level, self.streak = self.ema, 0, 0
    return self.ratio

  _STATE_KEYS = ("level", "ema", "entry_ema", "evals_at_level", "streak", "started")

  def state_dict(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in self._STATE_KEYS}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    missing = [k for k in self._STATE_KEYS if k not in state]
    if missing:
      raise MaskingError(f"curriculum state lacks {', '.join(missing)}")
    for k in self._STATE_KEYS:
      setattr(self, k, state[k])
    if not 0 <= self.level < len(self.levels):
      raise MaskingError(f"curriculum level {self.level} is outside the {len(self.levels)} levels")
