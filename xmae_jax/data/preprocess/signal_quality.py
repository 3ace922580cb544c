"""A window's signal quality: NeuroKit2's template-match quality per sample, summarized as its
15th percentile (config.quality_percentile), computed at the source rate before resampling.

quality() is the definition (NeuroKit's peak detection and rate); quality_fast() gives the same
result through the re-implementations in fast.py and falls back to quality() for anything
unusual, so its result is always quality()'s.
"""

from __future__ import annotations

import warnings

import numpy as np

from xmae_jax.data.preprocess import fast
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError
from xmae_jax.data.record import MODALITIES


def quality(
    cleaned: np.ndarray, fs: float, modality: str, config: PreprocessConfig
) -> tuple[float, str | None]:
  """(percentile of template-match quality, None), or (0.0, reason) when it cannot be computed.

  Too few beats (NeuroKit raises, or every correlation is NaN) gives 0.0 so that the default
  threshold rejects the segment while the record is still kept and counted.
  """
  return _summarize(lambda: quality_vector(cleaned, fs, modality, config.quality_method), config)


def quality_fast(
    cleaned: np.ndarray,
    fs: float,
    modality: str,
    config: PreprocessConfig,
    *,
    peaks: np.ndarray | None = None,
) -> tuple[float, str | None]:
  """quality() with the same result, computed without NeuroKit's per-call overhead.

  The peak finders NeuroKit's ecg_peaks/ppg_peaks call, its rate and its 'previous'
  interpolation run as fast.templatematch_fast; anything that function leaves to NeuroKit
  (another method, 3 peaks or fewer, beats of unequal length, fewer than two whole beats) goes
  through quality() itself. `peaks`: the peak finder's result on `cleaned`, when the caller
  already has it (segment_recording's heart rate).
  """
  if config.quality_method != "templatematch" or modality not in MODALITIES:
    return quality(cleaned, fs, modality, config)

  def vector():
    x = np.asarray(cleaned, float)
    q = fast.templatematch_fast(x, fs, modality, peaks)
    return quality_vector(x, fs, modality) if q is None else q

  return _summarize(vector, config)


def _summarize(vector, config: PreprocessConfig) -> tuple[float, str | None]:
  """quality()'s reduction of a per-sample quality vector (computed by `vector()`)."""
  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")
      q = vector()
  except fast.LibraryVersionError:
    raise
  except Exception:  # NeuroKit raises many types (ValueError, IndexError, ...) on too few beats
    return 0.0, "too_few_beats"
  if q.size == 0:
    return 0.0, "too_few_beats"
  if not np.all(np.isfinite(q)):
    # the reference's np.percentile would give NaN, which fails every threshold
    return 0.0, "undefined_correlation"
  return float(np.clip(np.percentile(q, config.quality_percentile), -1.0, 1.0)), None


def quality_vector(
    cleaned: np.ndarray, fs: float, modality: str, method: str = "templatematch"
) -> np.ndarray:
  """Per-sample quality as nk.ecg_quality / nk.ppg_quality(method) return it.

  'templatematch' runs NeuroKit's own peak detection and rate estimate, then templatematch().
  """
  import neurokit2 as nk  # heavy import, kept local so readers stay light

  if method != "templatematch":
    fn = {"ecg": nk.ecg_quality, "ppg": nk.ppg_quality}[modality]
    return np.asarray(fn(cleaned, sampling_rate=fs, method=method), float)
  if modality == "ecg":
    _, info = nk.ecg_peaks(cleaned, sampling_rate=fs)
    peaks = info["ECG_R_Peaks"]
  elif modality == "ppg":
    _, info = nk.ppg_peaks(cleaned, sampling_rate=fs)
    peaks = info["PPG_Peaks"]
  else:
    raise PreprocessError(f"unknown modality {modality!r}")
  return templatematch(np.asarray(cleaned, float), np.asarray(peaks, int), fs, modality)


def templatematch(x: np.ndarray, peaks: np.ndarray, fs: float, modality: str) -> np.ndarray:
  """NeuroKit2's `signal_quality(method='templatematch')` from NeuroKit's own rate, with the
  per-beat correlations of fast.beat_correlations.

  Beats are windows of one mean cycle length centred on each peak (NaN outside the signal,
  such beats are left out), the template is their mean, each beat's quality is its
  correlation with the template, held until the next beat.
  """
  import neurokit2 as nk  # heavy import, kept local so readers stay light

  n = len(x)
  if n < fs * 4:
    raise ValueError("The data length is too small to be segmented.")
  if len(peaks) == 0:
    raise ValueError("templatematch requires at least one detected peak")
  rate = np.mean(nk.signal_rate(peaks, sampling_rate=fs, desired_length=n))
  beats = fast.beat_correlations(x, peaks, rate, fs)
  if beats is None:
    # float rounding gave beats of unequal length: let NeuroKit handle this rare case
    fn = {"ecg": nk.ecg_quality, "ppg": nk.ppg_quality}[modality]
    return np.asarray(fn(x, peaks, sampling_rate=fs, method="templatematch"), float)
  cycles, cc = beats
  return np.asarray(nk.signal_interpolate(cycles, cc, x_new=np.arange(n), method="previous"), float)
