"""Faster equivalents of NeuroKit2 and scipy steps, each returning the library's own numbers.

Matched versions: NeuroKit2 0.2.13 and 0.3.0, scipy 1.17 and 1.18 (the sets pinned in
constraints.txt and constraints-current.txt). Each function names the call it replaces;
tests/data/test_preprocess_equality.py holds them to that call on the installed versions, and
segment_recording to the per-window path that calls NeuroKit itself. Why they exist is in
BENCHMARKS.md: NeuroKit's per-call overhead (pandas frames, input validation, a filter design
per call) cost more than the arithmetic on 10-s windows.

  clean_filters     nk.ecg_clean 'neurokit' / nk.ppg_clean 'elgendi', the Butterworth design
                    cached per rate; rows of a matrix are filtered independently
  ecg_findpeaks     nk.ecg_findpeaks(method='neurokit')['ECG_R_Peaks']
  ppg_findpeaks     nk.ppg_findpeaks(method='elgendi')['PPG_Peaks']
  mean_rate         np.mean(nk.signal_rate(peaks, fs, desired_length=n)), via pchip
  pchip             scipy PchipInterpolator(x, y)(np.arange(n)) without its input validation
  templatematch_fast  nk.ecg_quality / nk.ppg_quality(method='templatematch') from the peaks

The peak finders call two compiled steps of scipy.signal.find_peaks that have no public name;
scipy_peak_finding() is the one place that reaches them, and it raises LibraryVersionError with
the versions above if scipy moves them. scipy and NeuroKit are imported inside the functions:
importing the package stays light for callers that only need minmax.
"""

from __future__ import annotations

import functools

import numpy as np

from xmae_jax.errors import XmaeError

MATCHED_VERSIONS = "NeuroKit2 0.2.13-0.3.0, scipy 1.17-1.18"


class LibraryVersionError(XmaeError):
  """An installed library lacks what a re-implementation here relies on."""


@functools.lru_cache(maxsize=256)
def _butterworth(order: int, freqs: float | tuple[float, float], btype: str, fs: float):
  from scipy import signal  # heavy import, see the module docstring

  return signal.butter(
      order, list(freqs) if isinstance(freqs, tuple) else freqs, btype=btype, output="sos", fs=fs
  )


def clean_filters(x: np.ndarray, fs: float, modality: str, method: str) -> np.ndarray | None:
  """nk.ecg_clean(method='neurokit') / nk.ppg_clean(method='elgendi') of a finite 1-D signal,
  or of each row of a 2-D one (sosfiltfilt/filtfilt filter rows independently with the same
  arithmetic); None for another method, which only NeuroKit computes."""
  from scipy import signal  # heavy import, see the module docstring

  if modality == "ecg" and method in ("neurokit", "nk", "nk2", "neurokit2"):
    # 0.5 Hz order-5 high-pass, then a moving average one 50-Hz period wide (both zero-phase)
    y = signal.sosfiltfilt(_butterworth(5, 0.5, "highpass", fs), x)
    b = np.ones(int(fs / 50)) if fs >= 100 else np.ones(2)
    return signal.filtfilt(b, [len(b)], y, method="pad")
  if modality == "ppg" and method == "elgendi":
    return signal.sosfiltfilt(_butterworth(2, (0.5, 8.0), "bandpass", fs), x)
  return None


@functools.cache
def scipy_peak_finding():
  """(local maxima, prominences): scipy.signal.find_peaks's two compiled steps, called directly
  because find_peaks validates its arguments on every call, which took longer than the search
  in the ~30 short QRS/wave spans of a window. LibraryVersionError if scipy moved them."""
  try:
    # scipy's private module, imported where a moved name becomes LibraryVersionError.
    from scipy.signal._peak_finding_utils import _local_maxima_1d
    from scipy.signal._peak_finding_utils import _peak_prominences
  except ImportError:
    # Only for the version in the message.
    import scipy

    raise LibraryVersionError(
        f"scipy {scipy.__version__} has no scipy.signal._peak_finding_utils._local_maxima_1d "
        f"and _peak_prominences, which the preprocessing's peak finders call (they match "
        f"{MATCHED_VERSIONS}): install the scipy of constraints.txt"
    ) from None
  return _local_maxima_1d, _peak_prominences


def ecg_findpeaks(x: np.ndarray, fs: float) -> np.ndarray:
  """nk.ecg_findpeaks(x, fs, method='neurokit')['ECG_R_Peaks'], raising where it raises: QRS
  complexes where the smoothed absolute gradient exceeds 1.5 times its 0.75-s average; in each
  long enough one, the most prominent local maximum, at least 0.3 s after the last peak."""
  smooth, avg = int(np.rint(0.1 * fs)), int(np.rint(0.75 * fs))
  if not (1 <= smooth <= len(x) and 1 <= avg <= len(x)):
    import neurokit2 as nk  # heavy import, see the module docstring

    return nk.ecg_findpeaks(x, sampling_rate=fs, method="neurokit")["ECG_R_Peaks"]
  from scipy import ndimage  # heavy import, see the module docstring

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


def ppg_findpeaks(x: np.ndarray, fs: float) -> np.ndarray:
  """nk.ppg_findpeaks(x, fs, method='elgendi')['PPG_Peaks'], raising where it raises: waves
  where the 0.111-s moving average of the squared positive signal exceeds its 0.667-s average
  plus 2% of its mean; in each long enough one, the most prominent local maximum, at least
  0.3 s after the last peak."""
  peak_k, beat_k = int(np.rint(0.111 * fs)), int(np.rint(0.667 * fs))
  if not (1 <= peak_k <= len(x) and 1 <= beat_k <= len(x)):
    import neurokit2 as nk  # heavy import, see the module docstring

    return nk.ppg_findpeaks(x, sampling_rate=fs, method="elgendi")["PPG_Peaks"]
  from scipy import ndimage  # heavy import, see the module docstring

  positive = x.copy()
  positive[positive < 0] = 0
  sqrd = positive**2
  ma_peak = ndimage.uniform_filter1d(sqrd, peak_k, mode="nearest")
  waves = ma_peak > ndimage.uniform_filter1d(sqrd, beat_k, mode="nearest") + 0.02 * np.mean(sqrd)
  beg = np.where(np.logical_and(np.logical_not(waves[0:-1]), waves[1:]))[0]
  end = np.where(np.logical_and(waves[0:-1], np.logical_not(waves[1:])))[0]
  end = end[end > beg[0]]  # no wave at all raises, as NeuroKit's
  num = min(beg.size, end.size)
  return _most_prominent_peaks(x, beg[:num], end[:num], peak_k, int(np.rint(0.3 * fs)))


def _most_prominent_peaks(x, begs, ends, min_len, min_delay) -> np.ndarray:
  """In each [beg, end) at least min_len long, the local maximum of largest prominence (as
  scipy.signal.find_peaks(x[beg:end], prominence=(None, None)) finds and measures them), kept
  when more than min_delay samples after the last kept one."""
  local_maxima, prominences = scipy_peak_finding()
  x = np.ascontiguousarray(x, dtype=np.float64)  # filtfilt returns a reversed view
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


def mean_rate(peaks: np.ndarray, fs: float, n: int) -> float:
  """np.mean(nk.signal_rate(peaks, fs, desired_length=n)) for more than 3 integer peaks: the
  period at each peak (the first one set to the mean of the others), monotone cubic in between,
  held constant before the first and after the last peak."""
  period = np.ediff1d(peaks, to_begin=0) / fs
  period[0] = np.mean(period[1:])
  per_sample = pchip(peaks.astype(np.float64), period, n)
  per_sample[: peaks[0]] = per_sample[peaks[0]]
  per_sample[peaks[-1] + 1 :] = per_sample[peaks[-1]]
  return np.mean(60 / per_sample)


def pchip(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
  """scipy's PchipInterpolator(x, y, extrapolate=True)(np.arange(n)) for 1-D y, len(x) > 2.

  The same array expressions as scipy's PchipInterpolator._find_derivatives and
  CubicHermiteSpline, in the same order, so the coefficients are the same numbers, and the same
  compiled PPoly evaluation; what is skipped is their input validation, which took longer than
  the arithmetic for the ~10-beat windows here.
  """
  from scipy import interpolate  # heavy import, see the module docstring

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


def beat_correlations(
    x: np.ndarray, peaks: np.ndarray, rate: float, fs: float
) -> tuple[np.ndarray, np.ndarray] | None:
  """The per-beat step of NeuroKit's signal_quality(method='templatematch'), vectorized: (peak
  of each whole beat but the last, its correlation with the template, in [-1, 1]); None when
  float rounding gives beats of unequal length (NeuroKit handles that rare case itself).

  Beats are windows of one mean cycle length (60 / rate s) centred on each peak (NaN outside the
  signal, such beats are left out), the template is their mean; NeuroKit builds a pandas frame
  per beat for the same numbers.
  """
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


def templatematch_fast(
    x: np.ndarray, fs: float, modality: str, peaks: np.ndarray | None = None
) -> np.ndarray | None:
  """nk.<modality>_quality(x, fs, method='templatematch') of a cleaned window, from `peaks` (the
  finder's result on x) or, when not given, from ecg_findpeaks/ppg_findpeaks (raising where they
  raise). None for what only NeuroKit handles: shorter than 4 s, 3 peaks or fewer, beats of
  unequal length, fewer than two whole beats."""
  x = np.asarray(x, float)
  n = len(x)
  if peaks is None:
    peaks = ecg_findpeaks(x, fs) if modality == "ecg" else ppg_findpeaks(x, fs)
  peaks = np.asarray(peaks)
  if n < fs * 4 or len(peaks) <= 3 or peaks.dtype.kind not in "iu":
    return None
  beats = beat_correlations(x, peaks, mean_rate(peaks, fs, n), fs)
  if beats is None or len(beats[0]) == 0:
    return None
  cycles, cc = beats
  # nk.signal_interpolate(cycles, cc, np.arange(n), method="previous"): each sample takes the
  # value of the last beat at or before it, the first beat's before the first
  at = np.searchsorted(cycles, np.arange(n), side="right") - 1
  return cc[np.maximum(at, 0)]
