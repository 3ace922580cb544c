"""Model inputs from raw signals, as `load_encoder().embed` and the exported encoders take them:
(N, L) at any rate -> resampled, windowed, min-max normalized (N', segment_length) float32."""
from __future__ import annotations

from typing import Any

import numpy as np

from xmae_jax.data.preprocess.config import PreprocessConfig, PreprocessError
from xmae_jax.data.preprocess.transforms import clean, minmax, resample
from xmae_jax.data.preprocess.windows import check_sampling_rate
from xmae_jax.data.record import MODALITIES


def prepare_for_inference(x: Any, fs: float, *, config: PreprocessConfig | None = None,
                          modality: str | None = None, clean_signal: bool = False,
                          return_index: bool = False):
  """Raw (N, L) or (L,) signals at any fs -> (N', segment_length) float32 model inputs.

  Steps: optional NeuroKit cleaning (needs `modality`), resample to target_fs, windows of
  segment_seconds (stride from config), per-window min-max to [-1, 1]. A row shorter than one
  window raises PreprocessError. With return_index, also returns the source row of each window.
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
  if clean_signal:
    if modality not in MODALITIES:
      raise PreprocessError(f"clean_signal needs modality in {MODALITIES}, got {modality!r}")
    a = np.stack([clean(row, fs, modality, config) for row in a])
  n_out = int(round(a.shape[1] * config.target_fs / fs))
  rs = np.stack([resample(row, fs, config.target_fs, n_out, config.resample_method)
                 for row in a])
  length = config.segment_length
  if rs.shape[1] < length:
    raise PreprocessError(f"input of {a.shape[1] / fs:.2f} s is shorter than one "
                          f"{config.segment_seconds:g}-s window")
  step = int(round(config.stride * config.target_fs))
  starts = np.arange(0, rs.shape[1] - length + 1, step)
  idx = starts[:, None] + np.arange(length)[None]
  windows = rs[:, idx]                                    # (N, W, length)
  out = minmax(windows.reshape(-1, length)).astype(np.float32)
  if return_index:
    return out, np.repeat(np.arange(a.shape[0]), len(starts))
  return out
