"""Preprocessing as xMAE's: clean, quality, resample to 100 Hz, 10-s windows, min-max to [-1, 1].

One function per step, so that `xmae-prepare`, `load_encoder().embed` and evaluation share them:
  bad_intervals     long NaN runs and flat lines of a recording; they are cut out and windows
                    are laid from the start of each remaining stretch (good_stretches; with
                    modalities "any" only where every modality has one: union_stretches)
  check_window      per window: interpolate short NaN gaps, reject what is still NaN or flat
  clean             NeuroKit2 ecg_clean ("neurokit") / ppg_clean ("elgendi") at the source rate
  quality           template-match quality (15th percentile) at the source rate, before resampling
  resample          to 100 Hz (nk.signal_resample, "interpolation" = scipy.ndimage.zoom, as the
                    reference)
  minmax            per-segment min-max to [-1, 1]
  segment_recording the whole path for one continuous multi-modality recording -> segments
  derive_window_meta  per window: window_start_s, seconds_to_alarm, hr (ECG R-peaks), sbp/dbp
                    (arterial pressure beats), each NaN with a counted reason when unusable
  ppg_shift         how far a recording's PPG is moved earlier before windowing: a fixed
                    recording-system delay, or measured per recording (pulse_delay) so that every
                    recording's R-peak-to-pulse delay becomes the same; align_rows does the
                    same to recordings given as arrays (load_encoder().embed)
  prepare_for_inference  raw (N, L) at any fs -> (N', 1000) model inputs, windowed as above

segment_recording cleans the windows of a recording together and computes quality with
quality_fast (NeuroKit's algorithms without its per-call overhead); segment_recording_unbatched
runs clean/quality/resample one window at a time and is the oracle it must equal, bit for bit in
practice, which tests/data/test_preprocess_equality.py checks on real ICU records.

Every modality is windowed on the time axis at its own sampling rate, so multi-rate recordings
(e.g. ECG at 250 Hz and PPG at 125 Hz) need no common rate before the 100-Hz resampling.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import warnings
from typing import Any, Mapping

import numpy as np

from xmae_jax.data.record import MODALITIES
from xmae_jax.errors import XmaeError

TARGET_FS = 100
SEGMENT_SECONDS = 10.0
SEGMENT_LENGTH = 1000
REQUIREMENTS = {"both": ("ppg", "ecg"), "any": (), "ppg": ("ppg",), "ecg": ("ecg",)}
# pulse_delay: the windows it measures on, the beats it needs, the longest R-to-pulse delay
ALIGN_MIN_QUALITY = 0.8
ALIGN_MIN_BEATS = 20
ALIGN_MAX_DELAY_S = 1.0


class PreprocessError(XmaeError):
  """Input that cannot be preprocessed (wrong shape, unknown sampling rate, too short)."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Every parameter of the preprocessing; stored verbatim in the dataset manifest."""
  target_fs: int = TARGET_FS
  segment_seconds: float = SEGMENT_SECONDS
  stride_seconds: float | None = None        # None: = segment_seconds (non-overlapping)
  ecg_clean_method: str = "neurokit"
  ppg_clean_method: str = "elgendi"
  quality_method: str = "templatematch"
  quality_percentile: float = 15.0
  resample_method: str = "interpolation"
  max_nan_gap_seconds: float = 0.1           # shorter NaN gaps are linearly interpolated
  max_flat_seconds: float = 2.0              # a longer run of identical samples is a flat line
  min_fs: float = 20.0                       # below this a rate is treated as unknown/invalid
  modalities: str = "both"                   # which modalities a kept segment must have
  min_quality: float | None = None           # drop at prepare time (else the pipeline filters)
  # A recording system's own delay of the PPG behind the ECG (a bedside monitor's processing:
  # 150-250 ms on Challenge 2015), on top of the physiological pulse arrival time. The PPG is
  # moved this much earlier before windowing, so a window pairs each beat's R-peak with its
  # pulse about as the body does; 0 keeps the channels as recorded.
  ppg_delay_seconds: float = 0.0
  # Or measured per recording: the PPG is moved so that the median delay from an R-peak to the
  # next PPG systolic peak (pulse_delay, on the recording's own windows) becomes this many
  # seconds; ppg_delay_seconds is the fallback for a recording with too few clean beats. On
  # monitor data whose own delay differs between recordings, this takes that delay (and with
  # it each recording's mean pulse arrival time) out of the pairing; within a recording the
  # beat-to-beat timing stays as recorded.
  ppg_align_seconds: float | None = None

  def __post_init__(self):
    if self.modalities not in REQUIREMENTS:
      raise PreprocessError(f"modalities must be one of {sorted(REQUIREMENTS)}, "
                            f"got {self.modalities!r}")
    if self.segment_seconds * self.target_fs != round(self.segment_seconds * self.target_fs):
      raise PreprocessError("segment_seconds * target_fs must be a whole number of samples")
    if self.stride_seconds is not None and self.stride_seconds <= 0:
      raise PreprocessError(f"stride_seconds must be positive, got {self.stride_seconds}")
    if self.ppg_align_seconds is not None and not 0 <= self.ppg_align_seconds <= ALIGN_MAX_DELAY_S:
      raise PreprocessError(f"ppg_align_seconds must be in [0, {ALIGN_MAX_DELAY_S:g}], "
                            f"got {self.ppg_align_seconds}")
    if not 0 <= self.ppg_delay_seconds < self.segment_seconds:
      raise PreprocessError(f"ppg_delay_seconds must be in [0, {self.segment_seconds:g}), "
                            f"got {self.ppg_delay_seconds}")

  @property
  def segment_length(self) -> int:
    return int(round(self.segment_seconds * self.target_fs))

  @property
  def stride(self) -> float:
    return self.segment_seconds if self.stride_seconds is None else self.stride_seconds

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["segment_length"] = self.segment_length
    d["normalization"] = "per-segment min-max to [-1, 1]"
    d["quality"] = (f"{self.quality_percentile:g}th percentile of nk.<modality>_quality "
                    f"{self.quality_method}, at the source rate, before resampling")
    return d


@dataclasses.dataclass
class Segment:
  """One prepared window: both modalities at target_fs (absent ones are None)."""
  index: int
  start_s: float
  signals: dict[str, np.ndarray]
  quality: dict[str, float]
  meta: dict[str, Any]
  labels: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Single steps
# ---------------------------------------------------------------------------------------------
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


def check_window(x: np.ndarray, fs: float, config: PreprocessConfig) -> tuple[np.ndarray | None,
                                                                               str | None]:
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


def clean(x: np.ndarray, fs: float, modality: str, config: PreprocessConfig) -> np.ndarray:
  """NeuroKit2 cleaning at the source rate (ecg: 'neurokit', ppg: 'elgendi').

  The two default methods run as NeuroKit 0.2.13 computes them but with the Butterworth
  design cached per rate (designing the filter on every call was a large part of the
  preprocessing time: BENCHMARKS.md); tests check the output equals NeuroKit's. Other methods,
  and signals with NaN, go through NeuroKit itself.
  """
  method = config.ecg_clean_method if modality == "ecg" else config.ppg_clean_method
  if np.all(np.isfinite(x)):
    fast = _clean_default(np.asarray(x, np.float64), float(fs), modality, method.lower())
    if fast is not None:
      return fast
  import neurokit2 as nk  # heavy import, kept local so readers stay light
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if modality == "ecg":
      return np.asarray(nk.ecg_clean(x, sampling_rate=fs, method=config.ecg_clean_method), float)
    if modality == "ppg":
      return np.asarray(nk.ppg_clean(x, sampling_rate=fs, method=config.ppg_clean_method), float)
  raise PreprocessError(f"unknown modality {modality!r}")


@functools.lru_cache(maxsize=256)
def _butterworth(order: int, freqs: float | tuple[float, float], btype: str, fs: float):
  from scipy import signal
  return signal.butter(order, list(freqs) if isinstance(freqs, tuple) else freqs, btype=btype,
                       output="sos", fs=fs)


def _clean_default(x: np.ndarray, fs: float, modality: str, method: str) -> np.ndarray | None:
  """nk.ecg_clean(method='neurokit') / nk.ppg_clean(method='elgendi'); None for other methods."""
  from scipy import signal
  if modality == "ecg" and method in ("neurokit", "nk", "nk2", "neurokit2"):
    # 0.5 Hz order-5 high-pass, then a moving average one 50-Hz period wide (both zero-phase)
    y = signal.sosfiltfilt(_butterworth(5, 0.5, "highpass", fs), x)
    b = np.ones(int(fs / 50)) if fs >= 100 else np.ones(2)
    return signal.filtfilt(b, [len(b)], y, method="pad")
  if modality == "ppg" and method == "elgendi":
    return signal.sosfiltfilt(_butterworth(2, (0.5, 8.0), "bandpass", fs), x)
  return None


def quality(cleaned: np.ndarray, fs: float, modality: str,
            config: PreprocessConfig) -> tuple[float, str | None]:
  """(percentile of template-match quality, None), or (0.0, reason) when it cannot be computed.

  Too few beats (NeuroKit raises, or every correlation is NaN) gives 0.0 so that the default
  threshold rejects the segment while the record is still kept and counted.
  """
  return _summarize_quality(lambda: quality_vector(cleaned, fs, modality, config.quality_method),
                            config)


def _summarize_quality(vector, config: PreprocessConfig) -> tuple[float, str | None]:
  """quality()'s reduction of a per-sample quality vector (computed by `vector()`)."""
  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")
      q = vector()
  except Exception:  # NeuroKit raises many types (ValueError, IndexError, ...) on too few beats
    return 0.0, "too_few_beats"
  if q.size == 0:
    return 0.0, "too_few_beats"
  if not np.all(np.isfinite(q)):
    # the reference's np.percentile would give NaN, which fails every threshold
    return 0.0, "undefined_correlation"
  return float(np.clip(np.percentile(q, config.quality_percentile), -1.0, 1.0)), None


def quality_vector(cleaned: np.ndarray, fs: float, modality: str,
                   method: str = "templatematch") -> np.ndarray:
  """Per-sample quality as nk.ecg_quality / nk.ppg_quality(method) return it.

  'templatematch' runs NeuroKit's own peak detection and rate estimate, then a vectorized
  re-implementation of its template matching (NeuroKit builds a pandas frame per beat, which
  made it most of the preprocessing time: BENCHMARKS.md); tests check it equals NeuroKit's
  output.
  """
  import neurokit2 as nk
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
  """NeuroKit2 0.2.13 `signal_quality(method='templatematch')`, vectorized.

  Beats are windows of one mean cycle length centred on each peak (NaN outside the signal,
  such beats are left out), the template is their mean, each beat's quality is its
  correlation with the template, held until the next beat.
  """
  import neurokit2 as nk
  n = len(x)
  if n < fs * 4:
    raise ValueError("The data length is too small to be segmented.")
  if len(peaks) == 0:
    raise ValueError("templatematch requires at least one detected peak")
  rate = np.mean(nk.signal_rate(peaks, sampling_rate=fs, desired_length=n))
  beats = _beat_correlations(x, peaks, rate, fs)
  if beats is None:
    # float rounding gave beats of unequal length: let NeuroKit handle this rare case
    fn = {"ecg": nk.ecg_quality, "ppg": nk.ppg_quality}[modality]
    return np.asarray(fn(x, peaks, sampling_rate=fs, method="templatematch"), float)
  cycles, cc = beats
  return np.asarray(nk.signal_interpolate(cycles, cc, x_new=np.arange(n), method="previous"),
                    float)


def _beat_correlations(x: np.ndarray, peaks: np.ndarray, rate: float,
                       fs: float) -> tuple[np.ndarray, np.ndarray] | None:
  """(peak of each whole beat but the last, its correlation with the template, in [-1, 1]);
  None when float rounding gives beats of unequal length."""
  width = 60 / rate
  start, end = -0.5 * width, 0.5 * width
  pad = int((end - start) * fs)
  onsets = (peaks + pad).astype(np.float64)
  a = (onsets + start * fs).astype(np.int64)
  b = (onsets + end * fs).astype(np.int64)
  if np.any(b - a != b[0] - a[0]):
    return None
  padded = np.concatenate([np.full(pad, np.nan), x, np.full(pad, np.nan)])
  beats = padded[a[:, None] + np.arange(b[0] - a[0])[None]]
  valid = ~np.isnan(beats).any(axis=1)
  beats, cycles = beats[valid], peaks[valid]
  template = beats.mean(axis=0)
  bc = beats[:-1] - beats[:-1].mean(axis=1, keepdims=True)
  tc = template - template.mean()
  cc = (bc @ tc) / np.sqrt((bc * bc).sum(axis=1) * (tc @ tc))
  return cycles[:-1], np.clip(cc, -1, 1)


def quality_fast(cleaned: np.ndarray, fs: float, modality: str, config: PreprocessConfig, *,
                 peaks: np.ndarray | None = None) -> tuple[float, str | None]:
  """quality() with the same result, computed without NeuroKit's per-call overhead.

  NeuroKit's ecg_peaks/ppg_peaks wrap the peak finders in a pandas frame that is thrown away,
  and signal_rate/signal_interpolate add checks and copies around one scipy call each; together
  they were most of the quality time. Here the peak finders (ecg_findpeaks 'neurokit',
  ppg_findpeaks 'elgendi', the ones ecg_peaks/ppg_peaks call) run directly, the rate is the same
  PchipInterpolator evaluation, and the 'previous' interpolation of the beat correlations is an
  index lookup. Anything unusual (another method, 3 peaks or fewer, beats of unequal length,
  fewer than two whole beats) goes through quality() itself, so the result is always quality()'s;
  tests/data/test_preprocess_equality.py checks it on real records. `peaks`: the peak finder's
  result on `cleaned`, when the caller already has it (segment_recording's heart rate).
  """
  if config.quality_method != "templatematch" or modality not in MODALITIES:
    return quality(cleaned, fs, modality, config)
  return _summarize_quality(lambda: _templatematch_fast(cleaned, fs, modality, peaks), config)


def _templatematch_fast(x: np.ndarray, fs: float, modality: str,
                        peaks: np.ndarray | None = None) -> np.ndarray:
  """quality_vector(x, fs, modality, 'templatematch'), by the shortcuts quality_fast names."""
  x = np.asarray(x, float)
  n = len(x)
  if peaks is None:
    peaks = _ecg_peaks(x, fs) if modality == "ecg" else _ppg_peaks(x, fs)
  peaks = np.asarray(peaks)
  if n < fs * 4 or len(peaks) <= 3 or peaks.dtype.kind not in "iu":
    return quality_vector(x, fs, modality)
  # nk.signal_rate(peaks, fs, desired_length=n): the period at each peak (the first one set to
  # the mean of the others), monotone cubic in between, held constant before the first and after
  # the last peak
  period = np.ediff1d(peaks, to_begin=0) / fs
  period[0] = np.mean(period[1:])
  per_sample = _pchip(peaks.astype(np.float64), period, n)
  per_sample[:peaks[0]] = per_sample[peaks[0]]
  per_sample[peaks[-1] + 1:] = per_sample[peaks[-1]]
  rate = np.mean(60 / per_sample)
  beats = _beat_correlations(x, peaks, rate, fs)
  if beats is None or len(beats[0]) == 0:
    return quality_vector(x, fs, modality)
  cycles, cc = beats
  # nk.signal_interpolate(cycles, cc, np.arange(n), method="previous"): each sample takes the
  # value of the last beat at or before it, the first beat's before the first
  at = np.searchsorted(cycles, np.arange(n), side="right") - 1
  return cc[np.maximum(at, 0)]


def _ecg_peaks(x: np.ndarray, fs: float) -> np.ndarray:
  """nk.ecg_findpeaks(x, fs, method='neurokit')['ECG_R_Peaks'] (NeuroKit 0.2.13's algorithm):
  QRS complexes where the smoothed absolute gradient exceeds 1.5 times its 0.75-s average; in
  each long enough one, the most prominent local maximum, at least 0.3 s after the last peak."""
  smooth, avg = int(np.rint(0.1 * fs)), int(np.rint(0.75 * fs))
  if _PROMINENCE is None or not (1 <= smooth <= len(x) and 1 <= avg <= len(x)):
    import neurokit2 as nk
    return nk.ecg_findpeaks(x, sampling_rate=fs, method="neurokit")["ECG_R_Peaks"]
  from scipy import ndimage
  smoothgrad = ndimage.uniform_filter1d(np.abs(np.gradient(x)), smooth, mode="nearest")
  qrs = smoothgrad > 1.5 * ndimage.uniform_filter1d(smoothgrad, avg, mode="nearest")
  beg = np.where(np.logical_and(np.logical_not(qrs[0:-1]), qrs[1:]))[0]
  end = np.where(np.logical_and(qrs[0:-1], np.logical_not(qrs[1:])))[0]
  if len(beg) == 0:
    return np.array([])
  end = end[end > beg[0]]
  num = min(beg.size, end.size)
  min_len = np.mean(end[:num] - beg[:num]) * 0.4
  return _most_prominent_peaks(x, beg[:num], end[:num], min_len, int(np.rint(fs * 0.3)))


def _ppg_peaks(x: np.ndarray, fs: float) -> np.ndarray:
  """nk.ppg_findpeaks(x, fs, method='elgendi')['PPG_Peaks'] (NeuroKit 0.2.13's algorithm):
  waves where the 0.111-s moving average of the squared positive signal exceeds its 0.667-s
  average plus 2% of its mean; in each long enough one, the most prominent local maximum, at
  least 0.3 s after the last peak."""
  peak_k, beat_k = int(np.rint(0.111 * fs)), int(np.rint(0.667 * fs))
  if _PROMINENCE is None or not (1 <= peak_k <= len(x) and 1 <= beat_k <= len(x)):
    import neurokit2 as nk
    return nk.ppg_findpeaks(x, sampling_rate=fs, method="elgendi")["PPG_Peaks"]
  from scipy import ndimage
  positive = x.copy()
  positive[positive < 0] = 0
  sqrd = positive ** 2
  ma_peak = ndimage.uniform_filter1d(sqrd, peak_k, mode="nearest")
  waves = ma_peak > ndimage.uniform_filter1d(sqrd, beat_k, mode="nearest") + 0.02 * np.mean(sqrd)
  beg = np.where(np.logical_and(np.logical_not(waves[0:-1]), waves[1:]))[0]
  end = np.where(np.logical_and(waves[0:-1], np.logical_not(waves[1:])))[0]
  end = end[end > beg[0]]                          # no wave at all raises, as NeuroKit's
  num = min(beg.size, end.size)
  return _most_prominent_peaks(x, beg[:num], end[:num], peak_k, int(np.rint(0.3 * fs)))


def _most_prominent_peaks(x, begs, ends, min_len, min_delay) -> np.ndarray:
  """In each [beg, end) at least min_len long, the local maximum of largest prominence (as
  scipy.signal.find_peaks(x[beg:end], prominence=(None, None)) finds and measures them), kept
  when more than min_delay samples after the last kept one."""
  local_maxima, prominences = _PROMINENCE
  x = np.ascontiguousarray(x, dtype=np.float64)     # filtfilt returns a reversed view
  peaks = [0]
  for beg, end in zip(begs, ends):
    if end - beg < min_len:
      continue
    data = x[beg:end]
    locmax = local_maxima(data)[0]
    if locmax.size > 0:
      peak = beg + locmax[np.argmax(prominences(data, locmax, -1)[0])]
      if peak - peaks[-1] > min_delay:
        peaks.append(peak)
  return np.asarray(peaks[1:]).astype(int)


def _find_peaks_internals():
  """scipy.signal.find_peaks's two compiled steps (local maxima, prominences), called directly:
  find_peaks validates its arguments on every call, which took longer than the search in the
  ~30 short QRS/wave spans of a window. None (use NeuroKit's finders) if scipy moved them."""
  try:
    from scipy.signal._peak_finding_utils import _local_maxima_1d, _peak_prominences
  except ImportError:
    return None
  return _local_maxima_1d, _peak_prominences


_PROMINENCE = _find_peaks_internals()


def _pchip(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
  """scipy's PchipInterpolator(x, y, extrapolate=True)(np.arange(n)) for 1-D y, len(x) > 2.

  The same array expressions as scipy 1.x's PchipInterpolator._find_derivatives and
  CubicHermiteSpline, in the same order, so the coefficients are the same numbers, and the same
  compiled PPoly evaluation; what is skipped is their input validation, which took longer than
  the arithmetic for the ~10-beat windows here.
  """
  from scipy import interpolate
  hk = x[1:] - x[:-1]
  mk = (y[1:] - y[:-1]) / hk
  smk = np.sign(mk)
  condition = (smk[1:] != smk[:-1]) | (mk[1:] == 0) | (mk[:-1] == 0)
  w1 = 2 * hk[1:] + hk[:-1]
  w2 = hk[1:] + 2 * hk[:-1]
  with np.errstate(divide="ignore", invalid="ignore"):
    whmean = (w1 / mk[:-1] + w2 / mk[1:]) / (w1 + w2)
  dk = np.zeros_like(y)
  dk[1:-1][~condition] = 1.0 / whmean[~condition]
  dk[0] = _pchip_edge(hk[0], hk[1], mk[0], mk[1])
  dk[-1] = _pchip_edge(hk[-1], hk[-2], mk[-1], mk[-2])
  slope = np.diff(y) / hk
  t = (dk[:-1] + dk[1:] - 2 * slope) / hk
  c = np.stack((t / hk, (slope - dk[:-1]) / hk - t, dk[:-1], y[:-1]))
  return interpolate.PPoly.construct_fast(c, x, extrapolate=True)(np.arange(n, dtype=np.float64))


def _pchip_edge(h0, h1, m0, m1):
  """PchipInterpolator._edge_case for one end: the one-sided three-point derivative."""
  d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
  if np.sign(d) != np.sign(m0):
    return 0.0
  if np.sign(m0) != np.sign(m1) and abs(d) > 3.0 * abs(m0):
    return 3.0 * m0
  return d


def resample(x: np.ndarray, fs: float, target_fs: float, length: int | None = None,
             method: str = "interpolation") -> np.ndarray:
  """Resamples to target_fs (or exactly `length` samples) with nk.signal_resample."""
  import neurokit2 as nk
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


# ---------------------------------------------------------------------------------------------
# Per-window measurements (meta derived from the signals)
# ---------------------------------------------------------------------------------------------
HR_RANGE = (20.0, 300.0)          # bpm; outside it the R-peaks found are not a heart rhythm
# Pressure bounds (mmHg). Beyond them a monitor's arterial line is being flushed, zeroed,
# disconnected or is not an arterial pressure at all; a pulse pressure under 10 mmHg is a
# damped (over-damped catheter, clot, kinked line) or flat trace whose peaks are no systole.
SBP_RANGE = (40.0, 300.0)
DBP_RANGE = (10.0, 200.0)
MIN_PULSE_PRESSURE = 10.0
MIN_BEATS = 3
# a systolic peak stands out of the window by at least this share of its 5-95th percentile
# span, and follows the previous one by at least 0.25 s (up to 240 bpm)
ABP_PROMINENCE = 0.5
ABP_MIN_INTERVAL_S = 0.25


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
  """Heart rate of a cleaned ECG window from the R-peaks quality_fast finds (`_ecg_peaks`)."""
  peaks = _try_ecg_peaks(cleaned_ecg, fs)
  if peaks is None:
    return math.nan, "too_few_beats"
  return heart_rate_from_peaks(peaks, fs)


def _try_peaks(find, x: np.ndarray, fs: float) -> np.ndarray | None:
  """find(x, fs) (_ecg_peaks or _ppg_peaks), or None where the finder fails: NeuroKit, and
  these finders as NeuroKit, raise several types on signals without a QRS or pulse wave."""
  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore")
      peaks = np.asarray(find(np.asarray(x, float), fs))
  except Exception:  # pylint: disable=broad-except
    return None
  return peaks if peaks.dtype.kind in "iu" else None


def _try_ecg_peaks(x: np.ndarray, fs: float) -> np.ndarray | None:
  return _try_peaks(_ecg_peaks, x, fs)


def _try_ppg_peaks(x: np.ndarray, fs: float) -> np.ndarray | None:
  return _try_peaks(_ppg_peaks, x, fs)


def blood_pressure(abp: np.ndarray, fs: float) -> tuple[float, float, str | None]:
  """(SBP, DBP, None) in mmHg of an arterial pressure window, or (NaN, NaN, reason).

  Beats: systolic peaks (scipy find_peaks, prominence ABP_PROMINENCE of the window's 5-95th
  percentile span, ABP_MIN_INTERVAL_S apart), diastolic troughs the minimum between two
  peaks; SBP, DBP = their medians. Reasons: 'damped' (span or median pulse pressure under
  MIN_PULSE_PRESSURE), 'too_few_beats' (fewer than MIN_BEATS peaks), 'implausible' (outside
  SBP_RANGE / DBP_RANGE). NaN runs and flat lines are the caller's (check_window) to reject.
  """
  from scipy import signal
  x = np.asarray(abp, np.float64)
  lo, hi = np.percentile(x, [5, 95])
  if hi - lo < MIN_PULSE_PRESSURE:
    return math.nan, math.nan, "damped"
  peaks, _ = signal.find_peaks(x, distance=max(1, int(round(ABP_MIN_INTERVAL_S * fs))),
                               prominence=ABP_PROMINENCE * (hi - lo))
  if len(peaks) < MIN_BEATS:
    return math.nan, math.nan, "too_few_beats"
  troughs = [a + int(np.argmin(x[a:b])) for a, b in zip(peaks[:-1], peaks[1:])]
  sbp, dbp = float(np.median(x[peaks])), float(np.median(x[troughs]))
  if sbp - dbp < MIN_PULSE_PRESSURE:
    return math.nan, math.nan, "damped"
  if not (SBP_RANGE[0] <= sbp <= SBP_RANGE[1] and DBP_RANGE[0] <= dbp <= DBP_RANGE[1]):
    return math.nan, math.nan, "implausible"
  return sbp, dbp, None


def derive_window_meta(seg: Segment, config: PreprocessConfig, *, given: set[str],
                       hr: tuple[float, str | None] | None,
                       extra: Mapping[str, tuple[np.ndarray, float]],
                       stats: collections.Counter) -> None:
  """Adds what is derived per window to seg.meta (keys the source gives, `given`, are kept):

  window_start_s  the window's start in its recording (s)
  seconds_to_alarm  meta alarm_time_s - the window's end (negative after the alarm)
  hr              bpm from the ECG R-peaks (`hr`: the modality's (value, reason), else the
                  extra 'ecg' channel's window), NaN when unusable
  sbp, dbp        mmHg from the extra 'abp' channel (`blood_pressure`), NaN when unusable
  and counts 'derived/<name>' (a value) or 'derived_nan/<name>/<reason>' into `stats`.
  """
  t0, t1 = seg.start_s, seg.start_s + config.segment_seconds
  if "window_start_s" not in given:
    seg.meta["window_start_s"] = float(t0)
  if "alarm_time_s" in seg.meta and "seconds_to_alarm" not in given:
    seg.meta["seconds_to_alarm"] = float(seg.meta["alarm_time_s"]) - float(t1)
  if "hr" not in given:
    if hr is None and "ecg" in extra:
      x, fs = extra["ecg"]
      w, reason = _extra_window(x, fs, t0, config)
      hr = (math.nan, reason) if w is None else heart_rate(clean(w, fs, "ecg", config), fs)
    if hr is not None:
      seg.meta["hr"] = hr[0]
      _count(stats, "hr", hr[1])
  if "abp" in extra and not {"sbp", "dbp"} & given:
    x, fs = extra["abp"]
    w, reason = _extra_window(x, fs, t0, config)
    sbp, dbp, reason = (math.nan, math.nan, reason) if w is None else blood_pressure(w, fs)
    seg.meta["sbp"], seg.meta["dbp"] = sbp, dbp
    _count(stats, "sbp_dbp", reason)


def _extra_window(x: np.ndarray, fs: float, t0: float,
                  config: PreprocessConfig) -> tuple[np.ndarray | None, str | None]:
  """The window at t0 of a raw extra channel, after check_window; (None, reason) if unusable."""
  fs = float(fs)
  a, n = int(round(t0 * fs)), int(round(config.segment_seconds * fs))
  w = np.asarray(x[a:a + n], np.float64)
  if len(w) < n:
    return None, "missing"
  return check_window(w, fs, config)


def _count(stats: collections.Counter, name: str, reason: str | None) -> None:
  stats[f"derived/{name}" if reason is None else f"derived_nan/{name}/{reason}"] += 1


# ---------------------------------------------------------------------------------------------
# The whole path
# ---------------------------------------------------------------------------------------------
def segment_recording(
    signals: Mapping[str, tuple[np.ndarray, float]],
    config: PreprocessConfig,
    *,
    meta: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    events: Mapping[str, np.ndarray] | None = None,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    extra: Mapping[str, tuple[np.ndarray, float]] | None = None,
) -> tuple[list[Segment], collections.Counter]:
  """One continuous recording -> prepared segments, and a Counter of drops and notes.

  signals: modality -> (samples, fs), all starting at t = 0 (modalities may differ in rate).
  events:  name -> (K, 2) [start_s, end_s] intervals; a window's label is 1 if one overlaps it.
  series:  name -> (times_s, values); a window's meta value is their mean inside the window.
  extra:   name -> (samples, fs) raw channels that only give meta ('abp', or 'ecg' when it is
           no modality here): see derive_window_meta; they never change the windows.
  The Counter keys are 'dropped/<reason>' (per window), 'note/<reason>' (kept windows) and
  derive_window_meta's 'derived/...' counts.

  The windows of a recording are cleaned together (one filter call per modality) and their
  quality computed by quality_fast; the result equals segment_recording_unbatched's.
  """
  return _segment(signals, config, _RecordSteps, meta=meta, labels=labels, events=events,
                  series=series, extra=extra)


def segment_recording_unbatched(signals: Mapping[str, tuple[np.ndarray, float]],
                                config: PreprocessConfig,
                                **options) -> tuple[list[Segment], collections.Counter]:
  """segment_recording (same arguments and result), one window at a time through clean(),
  quality() and resample().

  The straightforward form (NeuroKit's own peak detection and rate), kept as the oracle that
  tests/data/test_preprocess_equality.py holds segment_recording to on real records.
  """
  return _segment(signals, config, _WindowSteps, **options)


def _segment(signals, config, steps_class, *, meta=None, labels=None, events=None,
             series=None, extra=None):
  stats: collections.Counter = collections.Counter()
  present = {}
  for m, (x, fs) in signals.items():
    if m not in MODALITIES:
      raise PreprocessError(f"unknown modality {m!r}")
    fs = check_sampling_rate(fs, m, config.min_fs)
    present[m] = (as_signal(x, m), fs)
  if not present:
    raise PreprocessError("missing channel: neither ECG nor PPG")
  shift = ppg_shift(present, config, steps_class, stats) if "ppg" in present else 0.0
  if shift:
    x, fs = present["ppg"]
    present["ppg"] = (x[int(round(shift * fs)):], fs)
  duration = min(len(x) / fs for x, fs in present.values())
  required = REQUIREMENTS[config.modalities]
  # Long NaN runs and flat lines (MIMIC gaps, leads off) are cut out first; windows are laid
  # from the start of each remaining stretch, so a gap costs only its own length.
  bad = {}
  for m, (x, fs) in present.items():
    if m in required or not required:
      bad[m] = []
      for reason, iv in bad_intervals(x, fs, config).items():
        if len(iv):
          stats[f"cut/{reason}_{m}"] += len(iv)
          stats[f"cut_seconds/{reason}_{m}"] += float(np.sum(iv[:, 1] - iv[:, 0]))
          bad[m].append(iv)
  if required:       # a window needs every required modality: what any of them lacks is cut
    stretches = good_stretches(duration, [iv for ivs in bad.values() for iv in ivs])
  else:              # "any": a window needs one modality, so only what all of them lack is cut
    stretches = union_stretches([good_stretches(duration, ivs) for ivs in bad.values()])
  starts = []
  for a, b in stretches:
    starts.extend(a + window_starts(b - a, config))
  if not starts:
    stats["dropped/too_short"] += 1
    return [], stats
  steps = steps_class(present, [float(t) for t in starts], config, required)
  given = set(meta or {}) | set(series or {})        # what the source says is kept as it is
  channels = {name: c for name, c in (extra or {}).items() if name not in present}
  out = []
  for k, t0 in enumerate(starts):
    seg, reason = _one_window(present, k, float(t0), config, required, stats, steps)
    if seg is None:
      stats[f"dropped/{reason}"] += 1
      continue
    seg.index = k
    t1 = t0 + config.segment_seconds
    seg.meta.update(meta or {})
    if "ppg" in present and (config.ppg_delay_seconds or config.ppg_align_seconds is not None):
      seg.meta["ppg_shift_s"] = round(shift, 4)
    for name, (times, values) in (series or {}).items():
      inside = (times >= t0) & (times < t1)
      if inside.any():
        seg.meta[name] = float(np.mean(values[inside]))
    derive_window_meta(seg, config, given=given, extra=channels, stats=stats,
                       hr=steps.heart_rate(k) if "ecg" in present else None)
    seg.labels.update(labels or {})
    for name, iv in (events or {}).items():
      iv = np.asarray(iv, float).reshape(-1, 2)
      seg.labels[name] = int(bool(np.any((iv[:, 1] >= t0) & (iv[:, 0] < t1))))
    out.append(seg)
  return out, stats


def ppg_shift(present, config: PreprocessConfig, steps_class, stats) -> float:
  """Seconds by which this recording's PPG is moved earlier: config.ppg_delay_seconds, or with
  config.ppg_align_seconds the measured pulse_delay minus it (never below 0: a recording whose
  pulses come sooner is kept as recorded). Counts per recording in `stats`: 'ppg_shift/measured',
  'ppg_shift/fallback' (too few clean beats), 'ppg_shift/clipped', and the seconds moved."""
  if config.ppg_align_seconds is None or "ecg" not in present:
    return float(config.ppg_delay_seconds)
  as_recorded = dataclasses.replace(config, ppg_align_seconds=None, ppg_delay_seconds=0.0,
                                    min_quality=None)
  segments, _ = _segment(present, as_recorded, steps_class)
  delay = pulse_delay(segments, config.target_fs)
  if delay is None:
    stats["ppg_shift/fallback"] += 1
    return float(config.ppg_delay_seconds)
  shift = delay - config.ppg_align_seconds
  if shift < 0:
    stats["ppg_shift/clipped"] += 1
    shift = 0.0
  stats["ppg_shift/measured"] += 1
  stats["ppg_shift_seconds/measured"] += shift
  return shift


def pulse_delay(segments, fs: float) -> float | None:
  """Median seconds from each R-peak to the next PPG systolic peak (at most ALIGN_MAX_DELAY_S
  later) over the prepared windows whose ECG and PPG quality both reach ALIGN_MIN_QUALITY;
  None with fewer than ALIGN_MIN_BEATS such beats."""
  delays = []
  for seg in segments:
    if min(seg.quality.get("ecg", 0.0), seg.quality.get("ppg", 0.0)) < ALIGN_MIN_QUALITY:
      continue
    r = _try_ecg_peaks(seg.signals["ecg"], fs)
    p = _try_ppg_peaks(seg.signals["ppg"], fs)
    if r is None or p is None or len(p) == 0:
      continue
    delays.extend(next_pulse_delays(r, p, ALIGN_MAX_DELAY_S * fs) / fs)
  return float(np.median(delays)) if len(delays) >= ALIGN_MIN_BEATS else None


def next_pulse_delays(r_peaks: np.ndarray, pulse_peaks: np.ndarray, max_delay: float) -> np.ndarray:
  """Samples from each R-peak to the first pulse peak after it, where that is within
  `max_delay` samples (both index arrays sorted)."""
  r_peaks, pulse_peaks = np.asarray(r_peaks, int), np.asarray(pulse_peaks, int)
  nxt = np.searchsorted(pulse_peaks, r_peaks, side="right")
  ok = nxt < len(pulse_peaks)
  d = pulse_peaks[nxt[ok]] - r_peaks[ok]
  return d[d <= max_delay]


def ppg_alignment(recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """The PPG shift a dataset was prepared with, from its recorded preprocessing (a manifest's
  or an encoder package's `preprocessing`, `PreprocessConfig.as_dict`): {ppg_delay_seconds,
  ppg_align_seconds}; {} when none was applied (or nothing is recorded)."""
  pre = dict(recorded or {})
  delay = float(pre.get("ppg_delay_seconds") or 0.0)
  align = pre.get("ppg_align_seconds")
  out = {}
  if delay:
    out["ppg_delay_seconds"] = delay
  if align is not None:
    out["ppg_align_seconds"] = float(align)
  return out


def alignment_note(alignment: Mapping[str, Any], modalities) -> str:
  """What `ppg_shift` does to a recording's PPG under `alignment` (`ppg_alignment`), in words
  for an output: the per-record alignment needs the ECG among `modalities`, else the fixed
  delay."""
  align, delay = alignment.get("ppg_align_seconds"), alignment.get("ppg_delay_seconds", 0.0)
  if "ppg" not in modalities or (align is None and not delay):
    return "none"
  if align is not None and "ecg" in modalities:
    return (f"per record: PPG moved so that R-peak to pulse peak is {align:g} s (measured on "
            f"the record's ECG; fixed {delay:g} s where too few clean beats)")
  return f"fixed: PPG moved {delay:g} s earlier" + (
      " (per-record alignment needs the ECG, which is not embedded)" if align is not None else "")


def align_rows(rows: Mapping[str, np.ndarray], fs: float, config: PreprocessConfig
               ) -> tuple[list[dict[str, np.ndarray]], np.ndarray, str]:
  """Raw recordings given as arrays, one per row of each modality's (N, L) array (the same
  recordings), with each row's PPG moved earlier as `segment_recording` moves a recording's
  (`ppg_shift` under `config`: measured on the row's ECG when that is given, else the fixed
  delay) and the other modality cut to the same length, so that both are windowed alike.

  A row that the shift would leave shorter than one window is kept as given. Returns each row's
  signals ({modality: 1-D}), each row's shift in seconds, and a note saying what was done
  (`alignment_note`, with the rows measured, on the fixed delay and kept as given)."""
  fs = check_sampling_rate(fs, "input", config.min_fs)
  alignment = ppg_alignment(config.as_dict())
  counts: collections.Counter = collections.Counter()
  out, shifts = [], []
  for i in range(len(next(iter(rows.values())))):
    present = {m: (as_signal(a[i], m), fs) for m, a in rows.items()}
    stats: collections.Counter = collections.Counter()
    shift = ppg_shift(present, config, _RecordSteps, stats) if "ppg" in present else 0.0
    cut = int(round(shift * fs))
    kept = len(present["ppg"][0]) - cut if "ppg" in present else 0
    if cut and round(kept * config.target_fs / fs) < config.segment_length:
      counts["kept as given (shorter than a window plus the shift)"] += 1
      shift, cut = 0.0, 0
    elif stats["ppg_shift/measured"]:
      counts["measured"] += 1
    elif stats["ppg_shift/fallback"]:
      counts["fixed (too few clean beats)"] += 1
    elif shift:
      counts["fixed"] += 1
    if cut:
      present = {m: x[cut:] if m == "ppg" else x[:kept] for m, (x, _) in present.items()}
    else:
      present = {m: x for m, (x, _) in present.items()}
    out.append(present)
    shifts.append(shift)
  note = alignment_note(alignment, tuple(rows))
  if note != "none" and counts:
    note += "; rows: " + ", ".join(f"{v} {k}" for k, v in counts.items())
  return out, np.asarray(shifts, np.float64), note


def _one_window(present, k, t0, config, required, stats,
                steps) -> tuple[Segment | None, str | None]:
  """The decisions for window k; `steps` computes its checks, quality and resampled signal."""
  for m in required:
    if m not in present:
      return None, f"missing_{m}"
  sig, qual, first_reason = {}, {}, None
  for m in present:
    reason = steps.check(m, k)
    if reason is not None:
      if m in required:
        return None, f"{reason}_{m}"
      first_reason = first_reason or f"{reason}_{m}"
      continue
    q, why = steps.quality(m, k)
    if why:
      stats[f"note/quality_{why}_{m}"] += 1
    if config.min_quality is not None and q < config.min_quality:
      if m in required or config.modalities == "any":
        return None, f"low_quality_{m}"
      continue
    r = steps.resampled(m, k)
    if not np.all(np.isfinite(r)) or np.ptp(r) == 0:
      return None, f"flat_line_{m}"
    sig[m] = minmax(r).astype(np.float32)
    qual[m] = q
  if not sig:
    return None, first_reason or "no_modality"
  return Segment(index=-1, start_s=t0, signals=sig, quality=qual, meta={}, labels={}), None


class _WindowSteps:
  """Each step computed when _one_window asks for it, for that window alone."""

  def __init__(self, present, starts, config, required):
    self.present, self.starts, self.config = present, starts, config
    self.windows, self.cleaned = {}, {}

  def check(self, m, k):
    x, fs = self.present[m]
    a = int(round(self.starts[k] * fs))
    n = int(round(self.config.segment_seconds * fs))
    w, reason = check_window(x[a:a + n], fs, self.config)
    self.windows[m, k] = w
    return reason

  def quality(self, m, k):
    fs = self.present[m][1]
    c = self.cleaned[m, k] = clean(self.windows[m, k], fs, m, self.config)
    return quality(c, fs, m, self.config)

  def resampled(self, m, k):
    c = self.cleaned[m, k]
    return resample(c, self.present[m][1], self.config.target_fs, self.config.segment_length,
                    self.config.resample_method)

  def heart_rate(self, k):
    if ("ecg", k) not in self.cleaned:
      return math.nan, self.check("ecg", k) or "missing"
    return heart_rate(self.cleaned["ecg", k], self.present["ecg"][1])


class _RecordSteps:
  """Every window's checks first; then, per modality, the windows _one_window will ask about are
  cleaned in one filter call (sosfiltfilt/filtfilt treat the rows of a matrix independently,
  with the same arithmetic) and each gets quality_fast and its resampling."""

  def __init__(self, present, starts, config, required):
    self.present, self.config = present, config
    self.reasons, self.windows, self.results = {}, {}, {}
    for m, (x, fs) in present.items():
      n = int(round(config.segment_seconds * fs))
      for k, t0 in enumerate(starts):
        a = int(round(t0 * fs))
        self.windows[m, k], self.reasons[m, k] = check_window(x[a:a + n], fs, config)
    if any(m not in present for m in required):
      return                                       # every window is dropped as missing_<m>
    for i, (m, (x, fs)) in enumerate(present.items()):
      # _one_window stops at the first required modality whose check fails
      earlier = [e for e in list(present)[:i] if e in required]
      by_length: dict[int, list[int]] = collections.defaultdict(list)
      for k in range(len(starts)):
        if self.reasons[m, k] is None and all(self.reasons[e, k] is None for e in earlier):
          by_length[len(self.windows[m, k])].append(k)
      for ks in by_length.values():
        cleaned = _clean_rows(np.stack([self.windows[m, k] for k in ks]), fs, m, config)
        for k, c in zip(ks, cleaned):
          self.results[m, k] = self._finish(m, c)

  def _finish(self, m, cleaned):
    fs, config = self.present[m][1], self.config
    # the R-peaks quality_fast finds also give the window's heart rate
    peaks = _try_ecg_peaks(cleaned, fs) if m == "ecg" else None
    hr = ((math.nan, "too_few_beats") if peaks is None else heart_rate_from_peaks(peaks, fs)
          ) if m == "ecg" else None
    return (quality_fast(cleaned, fs, m, config, peaks=peaks),
            resample(cleaned, fs, config.target_fs, config.segment_length, config.resample_method),
            hr)

  def check(self, m, k):
    return self.reasons[m, k]

  def heart_rate(self, k):
    if ("ecg", k) not in self.results:
      return math.nan, self.check("ecg", k) or "missing"
    return self.results["ecg", k][2]

  def quality(self, m, k):
    if (m, k) not in self.results:                 # not foreseen above: compute it alone
      c = _clean_rows(self.windows[m, k][None], self.present[m][1], m, self.config)[0]
      self.results[m, k] = self._finish(m, c)
    return self.results[m, k][0]

  def resampled(self, m, k):
    return self.results[m, k][1]


def _clean_rows(x: np.ndarray, fs: float, modality: str, config: PreprocessConfig) -> np.ndarray:
  """clean() of every row of a (K, n) matrix of finite windows."""
  method = config.ecg_clean_method if modality == "ecg" else config.ppg_clean_method
  fast = _clean_default(x, float(fs), modality, method.lower())
  if fast is not None:
    return fast
  return np.stack([clean(row, fs, modality, config) for row in x])


def check_row_length(shape: tuple[int, int], fs: float, config: PreprocessConfig) -> None:
  """Refuses rows shorter than one window (the cleaning filters would fail on them with a SciPy
  error), naming the shape: a transposed (L, N) array is the usual cause."""
  fs = check_sampling_rate(fs, "input", config.min_fs)
  if len(window_starts(shape[1] / fs, config)):
    return
  hint = ("; embed takes (N, L), one segment per row: is the array transposed?"
          if len(window_starts(shape[0] / fs, config)) else "")
  raise PreprocessError(
      f"wrong shape: input {tuple(shape)} has rows of {shape[1]} samples "
      f"({shape[1] / fs:.3g} s at {fs:g} Hz), shorter than one {config.segment_seconds:g}-s "
      f"window ({math.ceil(config.segment_seconds * fs)} samples at {fs:g} Hz){hint}")


def prepare_for_inference(x: Any, fs: float, *, config: PreprocessConfig | None = None,
                          modality: str | None = None, clean_signal: bool = False,
                          return_index: bool = False):
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
  pieces = [row[int(round(t0 * fs)):int(round(t0 * fs)) + n] for row in a for t0 in starts]
  by_length: dict[int, list[int]] = collections.defaultdict(list)
  for k, piece in enumerate(pieces):      # rounding can leave a last window one sample short
    by_length[len(piece)].append(k)
  out = np.empty((len(pieces), config.segment_length), np.float64)
  for ks in by_length.values():
    windows = np.stack([pieces[k] for k in ks])
    if clean_signal:
      windows = _clean_rows(windows, fs, modality, config)
    for k, w in zip(ks, windows):
      out[k] = resample(w, fs, config.target_fs, config.segment_length, config.resample_method)
  out = minmax(out, axis=1).astype(np.float32)
  if return_index:
    return out, np.repeat(np.arange(a.shape[0]), len(starts))
  return out
