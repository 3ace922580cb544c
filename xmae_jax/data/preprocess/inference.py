"""Model inputs from raw signals, as `load_encoder().embed` and the exported encoders take them:
(N, L) at any rate -> windowed as xmae-prepare windows a recording, each window resampled and
min-max normalized -> (N', segment_length) float32."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError
from xmae_jax.data.preprocess.transforms import clean_rows
from xmae_jax.data.preprocess.transforms import minmax
from xmae_jax.data.preprocess.transforms import resample
from xmae_jax.data.preprocess.windows import check_sampling_rate
from xmae_jax.data.preprocess.windows import window_starts
from xmae_jax.data.record import MODALITIES


def check_row_length(shape: tuple[int, int], fs: float, config: PreprocessConfig) -> None:
  """Refuses rows shorter than one window (the cleaning filters would fail on them with a SciPy
  error), naming the shape: a transposed (L, N) array is the usual cause."""
  fs = check_sampling_rate(fs, "input", config.min_fs)
  if len(window_starts(shape[1] / fs, config)):
    return
  hint = (
      "; embed takes (N, L), one segment per row: is the array transposed?"
      if len(window_starts(shape[0] / fs, config))
      else ""
  )
  raise PreprocessError(
      f"wrong shape: input {tuple(shape)} has rows of {shape[1]} samples "
      f"({shape[1] / fs:.3g} s at {fs:g} Hz), shorter than one {config.segment_seconds:g}-s "
      f"window ({math.ceil(config.segment_seconds * fs)} samples at {fs:g} Hz){hint}"
  )


def prepare_for_inference(
    x: Any,
    fs: float,
    *,
    config: PreprocessConfig | None = None,
    modality: str | None = None,
    clean_signal: bool = False,
    return_index: bool = False,
):
  """Raw (N, L) or (L,) signals at any fs -> (N', segment_length) float32 model inputs.

  Each row is a recording windowed as `segment_recording` windows one: windows of
  segment_seconds (stride from config) laid from its start at the source rate, each optionally
  NeuroKit-cleaned (needs `modality`), resampled to segment_length samples and min-max
  normalized to [-1, 1], so a recording embedded from an array gets the windows xmae-prepare
  makes of it. A row shorter than one window raises PreprocessError. With return_index, also
  returns the source row of each window.
  """
  config = config or PreprocessConfig()
  fs = check_sampling_rate(fs, "input", config.min_fs)
  a = np.asarray(x, np.float64)
  if a.ndim == 1:
    a = a[None]
  if a.ndim != 2 or a.shape[1] == 0:
    raise PreprocessError(f"wrong shape: expected (N, L) or (L,), got {np.shape(x)}")
  if not np.all(np.isfinite(a)):
    raise PreprocessError("input contains NaN or inf")
  if clean_signal and modality not in MODALITIES:
    raise PreprocessError(f"clean_signal needs modality in {MODALITIES}, got {modality!r}")
  check_row_length(a.shape, fs, config)
  starts = window_starts(a.shape[1] / fs, config)
  n = int(round(config.segment_seconds * fs))
  pieces = [row[int(round(t0 * fs)) : int(round(t0 * fs)) + n] for row in a for t0 in starts]
  by_length: dict[int, list[int]] = collections.defaultdict(list)
  for k, piece in enumerate(pieces):  # rounding can leave a last window one sample short
    by_length[len(piece)].append(k)
  out = np.empty((len(pieces), config.segment_length), np.float64)
  for ks in by_length.values():
    windows = np.stack([pieces[k] for k in ks])
    if clean_signal:
      windows = clean_rows(windows, fs, modality, config)
    for k, w in zip(ks, windows):
      out[k] = resample(w, fs, config.target_fs, config.segment_length, config.resample_method)
  out = minmax(out, axis=1).astype(np.float32)
  if return_index:
    return out, np.repeat(np.arange(a.shape[0]), len(starts))
  return out
