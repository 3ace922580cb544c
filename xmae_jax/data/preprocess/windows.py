"""Where windows go: input checks, the cuts (long NaN runs, flat lines), the good stretches left
between them, window start times, and the per-window check of what the cuts let through."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError


def check_sampling_rate(fs: Any, what: str = "signal", min_fs: float = 20.0) -> float:
  """A usable sampling rate as float, else PreprocessError('unknown sampling rate ...')."""
  try:
    fs = float(fs)
  except (TypeError, ValueError):
    raise PreprocessError(f"unknown sampling rate {fs!r} for {what}") from None
  if not math.isfinite(fs) or fs < min_fs:
    raise PreprocessError(f"unknown sampling rate {fs!r} for {what} (need >= {min_fs:g} Hz)")
  return fs


def as_signal(x: Any, what: str = "signal") -> np.ndarray:
  """A 1-D float64 array, else PreprocessError('wrong shape ...')."""
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    raise PreprocessError(f"wrong shape: {what} is not numeric") from None
  if a.ndim == 2 and 1 in a.shape:
    a = a.reshape(-1)
  if a.ndim != 1:
    raise PreprocessError(f"wrong shape: {what} has shape {a.shape}, expected 1-D")
  return a


def longest_run(mask: np.ndarray) -> int:
  """Length of the longest run of True in a 1-D bool array."""
  if not mask.any():
    return 0
  padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
  d = np.diff(padded)
  return int((np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).max())


def check_window(
    x: np.ndarray, fs: float, config: PreprocessConfig
) -> tuple[np.ndarray | None, str | None]:
  """(repaired window, None) or (None, reason): 'nan_run' or 'flat_line'."""
  bad = ~np.isfinite(x)
  if bad.any():
    if bad.all() or longest_run(bad) > config.max_nan_gap_seconds * fs:
      return None, "nan_run"
    idx = np.arange(len(x))
    x = x.copy()
    x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
  same = np.diff(x) == 0
  # a run of k equal differences is k+1 identical samples
  if np.ptp(x) == 0 or longest_run(same) + 1 > config.max_flat_seconds * fs:
    return None, "flat_line"
  return x, None


def runs(mask: np.ndarray, min_length: float) -> np.ndarray:
  """(K, 2) [start, end) sample indices of the runs of True longer than min_length."""
  padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
  d = np.diff(padded)
  iv = np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)
  return iv[(iv[:, 1] - iv[:, 0]) > min_length]


def bad_intervals(x: np.ndarray, fs: float, config: PreprocessConfig) -> dict[str, np.ndarray]:
  """{'nan_run': (K, 2) seconds, 'flat_line': (K, 2) seconds} that no window may touch."""
  nan = runs(~np.isfinite(x), config.max_nan_gap_seconds * fs)
  # k equal consecutive differences are k + 1 identical samples
  same = np.concatenate([np.diff(x) == 0, [False]])
  flat = runs(same, config.max_flat_seconds * fs - 1)
  flat[:, 1] += 1
  return {"nan_run": nan / fs, "flat_line": flat / fs}


def good_stretches(duration: float, bad: list[np.ndarray]) -> list[tuple[float, float]]:
  """[0, duration) minus the union of the bad intervals, as (start, end) in seconds."""
  iv = np.concatenate(bad) if bad else np.zeros((0, 2))
  iv = iv[np.argsort(iv[:, 0])] if len(iv) else iv
  out, t = [], 0.0
  for a, b in iv:
    if a > t:
      out.append((t, min(a, duration)))
    t = max(t, b)
  if t < duration:
    out.append((t, duration))
  return [(a, b) for a, b in out if b > a]


def union_stretches(stretches: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
  """The union of several lists of (start, end) stretches, merged and in order."""
  out: list[tuple[float, float]] = []
  for a, b in sorted(iv for ivs in stretches for iv in ivs):
    if out and a <= out[-1][1]:
      out[-1] = (out[-1][0], max(out[-1][1], b))
    else:
      out.append((a, b))
  return out


def window_starts(duration_s: float, config: PreprocessConfig) -> np.ndarray:
  """Start times (s) of every full window within a recording of `duration_s` seconds."""
  n = int(math.floor((duration_s - config.segment_seconds) / config.stride + 1e-9)) + 1
  return np.arange(max(n, 0)) * config.stride
