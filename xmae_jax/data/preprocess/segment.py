"""The whole path for one continuous recording: cuts, windows, per-window decisions, PPG
shift, meta and labels -> prepared segments and a Counter of what was dropped and why."""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from xmae_jax.data.preprocess import beats
from xmae_jax.data.preprocess.config import REQUIREMENTS
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError
from xmae_jax.data.preprocess.config import Segment
from xmae_jax.data.preprocess.meta import derive_window_meta
from xmae_jax.data.preprocess.signal_quality import quality_fast
from xmae_jax.data.preprocess.transforms import clean_rows
from xmae_jax.data.preprocess.transforms import minmax
from xmae_jax.data.preprocess.transforms import resample
from xmae_jax.data.preprocess.windows import as_signal
from xmae_jax.data.preprocess.windows import bad_intervals
from xmae_jax.data.preprocess.windows import check_sampling_rate
from xmae_jax.data.preprocess.windows import check_window
from xmae_jax.data.preprocess.windows import good_stretches
from xmae_jax.data.preprocess.windows import union_stretches
from xmae_jax.data.preprocess.windows import window_starts
from xmae_jax.data.record import MODALITIES


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
  quality computed by quality_fast (BatchedSteps); the result equals
  segment_recording_unbatched's.
  """
  return segment_with(
      BatchedSteps,
      signals,
      config,
      meta=meta,
      labels=labels,
      events=events,
      series=series,
      extra=extra,
  )


def segment_with(
    steps_class, signals, config, *, meta=None, labels=None, events=None, series=None, extra=None
):
  """segment_recording with `steps_class` computing each window's checks, quality, resampled
  signals and heart rate: a class taking (present, starts, config, required) with methods
  check(m, k), quality(m, k), resampled(m, k) and heart_rate(k), as BatchedSteps. The
  decisions (which windows are kept, what is counted) are this function's and one_window's."""
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
    present["ppg"] = (x[int(round(shift * fs)) :], fs)
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
  if required:  # a window needs every required modality: what any of them lacks is cut
    stretches = good_stretches(duration, [iv for ivs in bad.values() for iv in ivs])
  else:  # "any": a window needs one modality, so only what all of them lack is cut
    stretches = union_stretches([good_stretches(duration, ivs) for ivs in bad.values()])
  starts = []
  for a, b in stretches:
    starts.extend(a + window_starts(b - a, config))
  if not starts:
    stats["dropped/too_short"] += 1
    return [], stats
  steps = steps_class(present, [float(t) for t in starts], config, required)
  given = set(meta or {}) | set(series or {})  # what the source says is kept as it is
  channels = {name: c for name, c in (extra or {}).items() if name not in present}
  out = []
  for k, t0 in enumerate(starts):
    seg, reason = one_window(present, k, float(t0), config, required, stats, steps)
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
    derive_window_meta(
        seg,
        config,
        given=given,
        extra=channels,
        stats=stats,
        hr=steps.heart_rate(k) if "ecg" in present else None,
    )
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
  as_recorded = dataclasses.replace(
      config, ppg_align_seconds=None, ppg_delay_seconds=0.0, min_quality=None
  )
  segments, _ = segment_with(steps_class, present, as_recorded)
  delay = beats.pulse_delay(segments, config.target_fs)
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


def one_window(present, k, t0, config, required, stats, steps) -> tuple[Segment | None, str | None]:
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


class BatchedSteps:
  """Every window's checks first; then, per modality, the windows one_window will ask about are
  cleaned in one filter call (sosfiltfilt/filtfilt treat the rows of a matrix independently,
  with the same arithmetic) and each gets quality_fast and its resampling."""

  def __init__(self, present, starts, config, required):
    self.present, self.config = present, config
    self.reasons, self.windows, self.results = {}, {}, {}
    for m, (x, fs) in present.items():
      n = int(round(config.segment_seconds * fs))
      for k, t0 in enumerate(starts):
        a = int(round(t0 * fs))
        self.windows[m, k], self.reasons[m, k] = check_window(x[a : a + n], fs, config)
    if any(m not in present for m in required):
      return  # every window is dropped as missing_<m>
    for i, (m, (x, fs)) in enumerate(present.items()):
      # one_window stops at the first required modality whose check fails
      earlier = [e for e in list(present)[:i] if e in required]
      by_length: dict[int, list[int]] = collections.defaultdict(list)
      for k in range(len(starts)):
        if self.reasons[m, k] is None and all(self.reasons[e, k] is None for e in earlier):
          by_length[len(self.windows[m, k])].append(k)
      for ks in by_length.values():
        cleaned = clean_rows(np.stack([self.windows[m, k] for k in ks]), fs, m, config)
        for k, c in zip(ks, cleaned):
          self.results[m, k] = self._finish(m, c)

  def _finish(self, m, cleaned):
    fs, config = self.present[m][1], self.config
    if m != "ecg":
      hr, peaks = None, None
    else:  # the R-peaks quality_fast looks for also give the window's heart rate
      found = beats.find_rpeaks(cleaned, fs)
      hr, peaks = beats.heart_rate_from_peaks(found, fs), found if len(found) else None
    return (
        quality_fast(cleaned, fs, m, config, peaks=peaks),
        resample(cleaned, fs, config.target_fs, config.segment_length, config.resample_method),
        hr,
    )

  def check(self, m, k):
    return self.reasons[m, k]

  def heart_rate(self, k):
    if ("ecg", k) not in self.results:
      return math.nan, self.check("ecg", k) or "missing"
    return self.results["ecg", k][2]

  def quality(self, m, k):
    if (m, k) not in self.results:  # not foreseen above: compute it alone
      c = clean_rows(self.windows[m, k][None], self.present[m][1], m, self.config)[0]
      self.results[m, k] = self._finish(m, c)
    return self.results[m, k][0]

  def resampled(self, m, k):
    return self.results[m, k][1]
