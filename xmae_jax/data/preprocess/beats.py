"""Beats: the package's one R-peak and one PPG systolic-peak finder, and what is measured from
them (a window's heart rate, the delay from each R-peak to the next pulse, a recording's median
pulse delay).

find_rpeaks and find_pulse_peaks are NeuroKit2's ecg_peaks (method 'neurokit') and ppg_peaks
(method 'elgendi'), run as fast.ecg_findpeaks / fast.ppg_findpeaks. Preparation (heart rate,
quality, PPG alignment) and evaluation (reconstruction timing, its ceiling) both use them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from xmae_jax.data.preprocess import fast
from xmae_jax.data.preprocess.config import ALIGN_MAX_DELAY_S
from xmae_jax.data.preprocess.config import ALIGN_MIN_BEATS
from xmae_jax.data.preprocess.config import ALIGN_MIN_QUALITY

HR_RANGE = (20.0, 300.0)  # bpm; outside it the R-peaks found are not a heart rhythm
MIN_BEATS = 3


def find_rpeaks(ecg: np.ndarray, fs: float) -> np.ndarray:
  """R-peak sample indices of an ECG (NeuroKit2 ecg_peaks, method 'neurokit'); empty for a flat
  or non-finite signal and where the finder fails (it raises on signals without a QRS)."""
  return _find(fast.ecg_findpeaks, ecg, fs)


def find_pulse_peaks(ppg: np.ndarray, fs: float) -> np.ndarray:
  """PPG systolic-peak sample indices (NeuroKit2 ppg_peaks, method 'elgendi', the method the PPG
  is cleaned with); empty for a flat or non-finite signal and where the finder fails."""
  return _find(fast.ppg_findpeaks, ppg, fs)


def _find(finder, x: np.ndarray, fs: float) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
    return np.zeros(0, int)
  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")
      peaks = np.asarray(finder(x, fs))
  except fast.LibraryVersionError:
    raise
  except Exception:  # pylint: disable=broad-except
    return np.zeros(0, int)  # NeuroKit, and the finders as NeuroKit, raise several types
  # a finder that found no span at all returns an empty float array
  return peaks if peaks.dtype.kind in "iu" else np.zeros(0, int)


def heart_rate_from_peaks(peaks: np.ndarray, fs: float) -> tuple[float, str | None]:
  """(60 / median R-R interval in bpm, None), or (NaN, reason): 'too_few_beats' below
  MIN_BEATS peaks, 'implausible' outside HR_RANGE."""
  peaks = np.asarray(peaks)
  if len(peaks) < MIN_BEATS:
    return math.nan, "too_few_beats"
  hr = 60.0 * fs / float(np.median(np.diff(peaks)))
  if not HR_RANGE[0] <= hr <= HR_RANGE[1]:
    return math.nan, "implausible"
  return hr, None


def heart_rate(cleaned_ecg: np.ndarray, fs: float) -> tuple[float, str | None]:
  """Heart rate of a cleaned ECG window from its R-peaks (find_rpeaks)."""
  return heart_rate_from_peaks(find_rpeaks(cleaned_ecg, fs), fs)


def next_pulse_delays(r_peaks: np.ndarray, pulse_peaks: np.ndarray, max_delay: float) -> np.ndarray:
  """Samples from each R-peak to the first pulse peak after it, where that is within
  `max_delay` samples (both index arrays sorted)."""
  r_peaks, pulse_peaks = np.asarray(r_peaks, int), np.asarray(pulse_peaks, int)
  nxt = np.searchsorted(pulse_peaks, r_peaks, side="right")
  ok = nxt < len(pulse_peaks)
  d = pulse_peaks[nxt[ok]] - r_peaks[ok]
  return d[d <= max_delay]


def pulse_delay(segments, fs: float) -> float | None:
  """Median seconds from each R-peak to the next PPG systolic peak (at most ALIGN_MAX_DELAY_S
  later) over the prepared windows whose ECG and PPG quality both reach ALIGN_MIN_QUALITY;
  None with fewer than ALIGN_MIN_BEATS such beats."""
  delays = []
  for seg in segments:
    if min(seg.quality.get("ecg", 0.0), seg.quality.get("ppg", 0.0)) < ALIGN_MIN_QUALITY:
      continue
    r = find_rpeaks(seg.signals["ecg"], fs)
    p = find_pulse_peaks(seg.signals["ppg"], fs)
    delays.extend(next_pulse_delays(r, p, ALIGN_MAX_DELAY_S * fs) / fs)
  return float(np.median(delays)) if len(delays) >= ALIGN_MIN_BEATS else None
