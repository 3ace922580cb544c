"""Per-window meta derived from the signals: the window's place in its recording and the time to
its alarm, heart rate from the ECG, systolic and diastolic pressure from an arterial line."""

from __future__ import annotations

import collections
import math
from typing import Mapping

import numpy as np

from xmae_jax.data.preprocess.beats import MIN_BEATS
from xmae_jax.data.preprocess.beats import heart_rate
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import Segment
from xmae_jax.data.preprocess.transforms import clean
from xmae_jax.data.preprocess.windows import check_window

# Pressure bounds (mmHg). Beyond them a monitor's arterial line is being flushed, zeroed,
# disconnected or is not an arterial pressure at all; a pulse pressure under 10 mmHg is a
# damped (over-damped catheter, clot, kinked line) or flat trace whose peaks are no systole.
SBP_RANGE = (40.0, 300.0)
DBP_RANGE = (10.0, 200.0)
MIN_PULSE_PRESSURE = 10.0
# a systolic peak stands out of the window by at least this share of its 5-95th percentile
# span, and follows the previous one by at least 0.25 s (up to 240 bpm)
ABP_PROMINENCE = 0.5
ABP_MIN_INTERVAL_S = 0.25


def blood_pressure(abp: np.ndarray, fs: float) -> tuple[float, float, str | None]:
  """(SBP, DBP, None) in mmHg of an arterial pressure window, or (NaN, NaN, reason).

  Beats: systolic peaks (scipy find_peaks, prominence ABP_PROMINENCE of the window's 5-95th
  percentile span, ABP_MIN_INTERVAL_S apart), diastolic troughs the minimum between two
  peaks; SBP, DBP = their medians. Reasons: 'damped' (span or median pulse pressure under
  MIN_PULSE_PRESSURE), 'too_few_beats' (fewer than MIN_BEATS peaks), 'implausible' (outside
  SBP_RANGE / DBP_RANGE). NaN runs and flat lines are the caller's (check_window) to reject.
  """
  from scipy import signal  # heavy import, kept local so readers stay light

  x = np.asarray(abp, np.float64)
  lo, hi = np.percentile(x, [5, 95])
  if hi - lo < MIN_PULSE_PRESSURE:
    return math.nan, math.nan, "damped"
  peaks, _ = signal.find_peaks(
      x, distance=max(1, int(round(ABP_MIN_INTERVAL_S * fs))), prominence=ABP_PROMINENCE * (hi - lo)
  )
  if len(peaks) < MIN_BEATS:
    return math.nan, math.nan, "too_few_beats"
  troughs = [a + int(np.argmin(x[a:b])) for a, b in zip(peaks[:-1], peaks[1:])]
  sbp, dbp = float(np.median(x[peaks])), float(np.median(x[troughs]))
  if sbp - dbp < MIN_PULSE_PRESSURE:
    return math.nan, math.nan, "damped"
  if not (SBP_RANGE[0] <= sbp <= SBP_RANGE[1] and DBP_RANGE[0] <= dbp <= DBP_RANGE[1]):
    return math.nan, math.nan, "implausible"
  return sbp, dbp, None


def derive_window_meta(
    seg: Segment,
    config: PreprocessConfig,
    *,
    given: set[str],
    hr: tuple[float, str | None] | None,
    extra: Mapping[str, tuple[np.ndarray, float]],
    stats: collections.Counter,
) -> None:
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


def _extra_window(
    x: np.ndarray, fs: float, t0: float, config: PreprocessConfig
) -> tuple[np.ndarray | None, str | None]:
  """The window at t0 of a raw extra channel, after check_window; (None, reason) if unusable."""
  fs = float(fs)
  a, n = int(round(t0 * fs)), int(round(config.segment_seconds * fs))
  w = np.asarray(x[a : a + n], np.float64)
  if len(w) < n:
    return None, "missing"
  return check_window(w, fs, config)


def _count(stats: collections.Counter, name: str, reason: str | None) -> None:
  stats[f"derived/{name}" if reason is None else f"derived_nan/{name}/{reason}"] += 1
