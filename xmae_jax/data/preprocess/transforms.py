"""What is done to a window's samples: NeuroKit2 cleaning at the source rate, resampling to
target_fs, and per-segment min-max to [-1, 1]."""

from __future__ import annotations

import warnings

import numpy as np

from xmae_jax.data.preprocess import fast
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError


def clean(x: np.ndarray, fs: float, modality: str, config: PreprocessConfig) -> np.ndarray:
  """NeuroKit2 cleaning at the source rate (ecg: 'neurokit', ppg: 'elgendi').

  The two default methods run as fast.clean_filters (the filter design cached per rate); other
  methods, and signals with NaN, go through NeuroKit itself.
  """
  method = config.ecg_clean_method if modality == "ecg" else config.ppg_clean_method
  if np.all(np.isfinite(x)):
    filtered = fast.clean_filters(np.asarray(x, np.float64), float(fs), modality, method.lower())
    if filtered is not None:
      return filtered
  import neurokit2 as nk  # heavy import, kept local so readers stay light

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if modality == "ecg":
      return np.asarray(nk.ecg_clean(x, sampling_rate=fs, method=config.ecg_clean_method), float)
    if modality == "ppg":
      return np.asarray(nk.ppg_clean(x, sampling_rate=fs, method=config.ppg_clean_method), float)
  raise PreprocessError(f"unknown modality {modality!r}")


def clean_rows(x: np.ndarray, fs: float, modality: str, config: PreprocessConfig) -> np.ndarray:
  """clean() of every row of a (K, n) matrix of finite windows, in one filter call where the
  method allows it."""
  method = config.ecg_clean_method if modality == "ecg" else config.ppg_clean_method
  filtered = fast.clean_filters(x, float(fs), modality, method.lower())
  if filtered is not None:
    return filtered
  return np.stack([clean(row, fs, modality, config) for row in x])


def resample(
    x: np.ndarray,
    fs: float,
    target_fs: float,
    length: int | None = None,
    method: str = "interpolation",
) -> np.ndarray:
  """Resamples to target_fs (or exactly `length` samples) with nk.signal_resample
  ('interpolation' = scipy.ndimage.zoom, as the reference)."""
  import neurokit2 as nk  # heavy import, kept local so readers stay light

  n = int(round(len(x) * target_fs / fs)) if length is None else int(length)
  if n == len(x):
    return np.asarray(x, float)
  return np.asarray(nk.signal_resample(x, desired_length=n, method=method), float)


def minmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """Per-segment min-max to [-1, 1] along `axis`, as the reference; a constant segment maps to 0.

  The one min-max of the package: preparation, inference inputs and the pipeline's
  `data.normalize="minmax"`. float32 input is computed in float32 (the pipeline's batches, with
  no float64 copy), anything else in float64.
  """
  x = np.asarray(x)
  if x.dtype != np.float32:
    x = x.astype(np.float64)
  lo = x.min(axis=axis, keepdims=True)
  span = x.max(axis=axis, keepdims=True) - lo
  scale = np.divide(2.0, span, out=np.zeros_like(span), where=span > 0)
  out = (x - lo) * scale
  out -= (span > 0).astype(x.dtype)
  return out
