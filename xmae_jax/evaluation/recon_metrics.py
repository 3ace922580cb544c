"""Reconstruction metrics on arrays (true and reconstructed waveforms, the masked samples): the
masked-sample correlation, beat landmarks (R-peaks, pulse feet), one-to-one beat matching within
a tolerance, their summary, and the paired difference of a reconstruction and its control with
subject-bootstrap CIs. What each measures and why: `reconstruction`'s module docstring, which
runs models and writes the report.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from xmae_jax.data import preprocess

WITHIN_MS = 50.0


def masked_correlation(true: np.ndarray, recon: np.ndarray, masked: np.ndarray) -> np.ndarray:
  """Per-row Pearson r over the masked samples.

  NaN where a row has < 3 masked samples or is flat.
  """
  out = np.full(len(true), np.nan)
  for i, (t, r, m) in enumerate(zip(true, recon, masked.astype(bool))):
    if m.sum() < 3:
      continue
    a, b = t[m] - t[m].mean(), r[m] - r[m].mean()
    denom = math.sqrt(float(np.dot(a, a) * np.dot(b, b)))
    if denom > 0:
      out[i] = float(np.dot(a, b) / denom)
  return out


def detect_pulse_feet(ppg: np.ndarray, fs: float) -> np.ndarray:
  """Pulse-foot sample indices: the minimum before each systolic peak (module docstring; empty
  when no peak is found)."""
  peaks = preprocess.find_pulse_peaks(ppg, fs)
  if len(peaks) == 0:
    return np.zeros(0, int)
  x = np.asarray(ppg, np.float64)
  first_span = int(np.median(np.diff(peaks))) if len(peaks) > 1 else int(round(fs))
  starts = np.concatenate([[max(0, peaks[0] - first_span)], peaks[:-1]])
  feet = []
  for start, peak in zip(starts, peaks):
    foot = start + int(np.argmin(x[start:peak])) if peak > start else start
    if foot > start:  # a minimum on the window's left edge is no trough
      feet.append(foot)
  return np.asarray(feet, int)


DETECTORS = {"ecg": preprocess.find_rpeaks, "ppg": detect_pulse_feet}


def match_beats(
    true_peaks: np.ndarray, recon_peaks: np.ndarray, tolerance: float
) -> list[tuple[int, int]]:
  """One-to-one pairs (true, recon) by increasing distance, each within `tolerance` samples."""
  pairs = sorted(
      (
          (abs(int(r) - int(t)), i, j)
          for i, t in enumerate(true_peaks)
          for j, r in enumerate(recon_peaks)
          if abs(int(r) - int(t)) <= tolerance
      )
  )
  used_t, used_r, out = set(), set(), []
  for _, i, j in pairs:
    if i not in used_t and j not in used_r:
      used_t.add(i)
      used_r.add(j)
      out.append((i, j))
  return out


@dataclasses.dataclass
class BeatTiming:
  errors_ms: np.ndarray  # signed recon - true, matched beats
  n_true: int  # true R-peaks inside masked parts
  n_matched: int
  n_extra: int  # recon peaks inside masked parts matching no true beat
  per_row: np.ndarray  # (rows, 3): true masked beats, matched, matched within 50 ms

  def summary(self) -> dict[str, float]:
    e = np.abs(self.errors_ms)
    within = int(np.sum(e <= WITHIN_MS))
    return {
        "true_beats": self.n_true,
        "matched_beats": self.n_matched,
        "extra_peaks": self.n_extra,
        "sensitivity": self.n_matched / self.n_true if self.n_true else math.nan,
        "median_abs_error_ms": float(np.median(e)) if len(e) else math.nan,
        "mean_abs_error_ms": float(np.mean(e)) if len(e) else math.nan,
        "median_signed_error_ms": float(np.median(self.errors_ms)) if len(e) else math.nan,
        "share_within_50ms": within / self.n_true if self.n_true else math.nan,
    }


def beat_timing(
    true: np.ndarray,
    recon: np.ndarray,
    masked: np.ndarray,
    fs: float,
    *,
    tolerance_ms: float = 150.0,
    detect=preprocess.find_rpeaks,
) -> tuple[BeatTiming, list[dict[str, np.ndarray]]]:
  """Beat timing of the reconstruction over all rows (R-peaks by default; `detect(x, fs)` gives
  another landmark's sample indices, e.g. detect_pulse_feet); also each row's detected beats."""
  tol = tolerance_ms * fs / 1000.0
  errors, n_true, n_matched, n_extra, peaks, per_row = [], 0, 0, 0, [], []
  for t, r, m in zip(true, recon, masked.astype(bool)):
    pt, pr = detect(t, fs), detect(r, fs)
    peaks.append({"true": pt, "recon": pr})
    pt_m = pt[m[pt]] if len(pt) else pt
    # Match masked true beats against every recon peak (a beat at the mask's edge may be
    # reconstructed a sample outside it), extras counted inside the masked part only.
    pairs = match_beats(pt_m, pr, tol)
    matched_r = {j for _, j in pairs}
    n_true += len(pt_m)
    n_matched += len(pairs)
    n_extra += sum(1 for j, p in enumerate(pr) if m[p] and j not in matched_r)
    row_errors = [(int(pr[j]) - int(pt_m[i])) * 1000.0 / fs for i, j in pairs]
    errors += row_errors
    per_row.append((len(pt_m), len(pairs), sum(abs(e) <= WITHIN_MS for e in row_errors)))
  return (
      BeatTiming(
          np.asarray(errors, float),
          n_true,
          n_matched,
          n_extra,
          np.asarray(per_row, int).reshape(-1, 3),
      ),
      peaks,
  )


def summarize(
    true,
    recon,
    masked,
    fs,
    *,
    tolerance_ms=150.0,
    detect=preprocess.find_rpeaks,
    per_row: bool = False,
) -> tuple[dict[str, Any], list]:
  """Correlation over the `masked` samples and beat timing (`detect`: see beat_timing);
  `per_row` adds BeatTiming.per_row under 'per_row' (for paired_beat_difference)."""
  r = masked_correlation(true, recon, masked)
  timing, peaks = beat_timing(true, recon, masked, fs, tolerance_ms=tolerance_ms, detect=detect)
  finite = r[np.isfinite(r)]
  corr = {
      "median_r": float(np.median(finite)) if len(finite) else math.nan,
      "iqr_r": (
          [float(np.percentile(finite, 25)), float(np.percentile(finite, 75))]
          if len(finite)
          else [math.nan, math.nan]
      ),
      "mean_r": float(np.mean(finite)) if len(finite) else math.nan,
  }
  summary = {"segments": int(len(true)), **corr, **timing.summary()}
  if per_row:
    summary["per_row"] = timing.per_row
  return summary, peaks


def paired_beat_difference(
    paired: np.ndarray, control: np.ndarray, groups, *, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
  """Sensitivity and share within 50 ms of a reconstruction minus its control's, from their
  BeatTiming.per_row on the same windows, each with a 95% CI from resampling subjects (`groups`,
  one per window; both conditions resampled with the same subjects' windows)."""
  # probe_metrics loads scipy.stats, which takes a while; the other metrics here need it not.
  from xmae_jax.evaluation import probe_metrics

  def rates(rows, idx):
    t = rows[idx, 0].sum()
    return np.array([rows[idx, 1].sum(), rows[idx, 2].sum()]) / t if t else np.full(2, np.nan)

  everything = np.arange(len(paired))
  value = rates(paired, everything) - rates(control, everything)
  resamples = probe_metrics.subject_resamples(np.asarray(groups), n_bootstrap, seed)
  draws = np.array([rates(paired, idx) - rates(control, idx) for idx in resamples])
  return {
      "subjects": int(len(np.unique(np.asarray(groups)))),
      "n_bootstrap": n_bootstrap,
      **{
          name: {"value": float(value[k]), "ci95": list(probe_metrics.percentile_ci(draws[:, k]))}
          for k, name in enumerate(("sensitivity", "share_within_50ms"))
      },
  }
