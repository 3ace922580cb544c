"""Cross-modal reconstruction report: masked ECG reconstructed from PPG, on held-out paired data.

For a model with the xMAE call contract (`model(ppg, ecg, ecg_keep)` -> `ecg_reconstruction`;
xMAE, and its no-bridge variant as the ECG-only control), on paired segments it never trained
on (a prepared dataset's test split = simulator subjects held out by the subject split; real
WFDB records such as ../shared/data/physionet):

  * masks: the model's own masking (mode and ratio from its config, anchor 0.8 for xMAE), drawn
    from a fixed seed, identical for every model and control;
  * correlation: Pearson r between true and reconstructed ECG over the masked samples of each
    segment (median, IQR and mean over segments);
  * R-peak timing: R-peaks detected with NeuroKit2 (`ecg_peaks`, its default "neurokit" method)
    in the true and in the reconstructed ECG (the whole 10 s, so beats at the mask's edge are
    found), the true beats inside the masked part matched one-to-one to the nearest
    reconstructed peak within `tolerance_ms`; reported: median |error| (ms) of matched beats,
    the share of true masked beats with a reconstructed peak within 50 ms (unmatched beats
    count as misses), sensitivity, and reconstructed peaks in the masked part that match no
    true beat;
  * control: the same with each segment's PPG replaced by another segment's (rolled by half the
    set, so mostly another subject): if PPG drives the reconstruction, timing must collapse.
Example figures show true vs reconstructed ECG, the masked part shaded, detected R-peaks marked.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import report as report_lib
from xmae_jax.training import figures

WITHIN_MS = 50.0


class ReconstructionError(XmaeError):
  """A model that does not reconstruct ECG, or data without paired ECG and PPG."""


# ----------------------------------------------------------------------------------------------
# Metrics on arrays


def masked_correlation(true: np.ndarray, recon: np.ndarray, masked: np.ndarray) -> np.ndarray:
  """Per-row Pearson r over the masked samples (NaN where a row has < 3 masked samples or is flat)."""
  out = np.full(len(true), np.nan)
  for i, (t, r, m) in enumerate(zip(true, recon, masked.astype(bool))):
    if m.sum() < 3:
      continue
    a, b = t[m] - t[m].mean(), r[m] - r[m].mean()
    denom = math.sqrt(float(np.dot(a, a) * np.dot(b, b)))
    if denom > 0:
      out[i] = float(np.dot(a, b) / denom)
  return out


def detect_rpeaks(ecg: np.ndarray, fs: float) -> np.ndarray:
  """R-peak sample indices found by NeuroKit2 (empty when it finds none or fails)."""
  import warnings
  import neurokit2 as nk
  x = np.asarray(ecg, np.float64)
  if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
    return np.zeros(0, int)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      _, info = nk.ecg_peaks(x, sampling_rate=int(round(fs)), method="neurokit")
  except Exception:   # NeuroKit raises on signals without detectable QRS complexes
    return np.zeros(0, int)
  return np.asarray(info["ECG_R_Peaks"], int)


def match_beats(true_peaks: np.ndarray, recon_peaks: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
  """One-to-one pairs (true, recon) by increasing distance, each within `tolerance` samples."""
  pairs = sorted(((abs(int(r) - int(t)), i, j) for i, t in enumerate(true_peaks)
                  for j, r in enumerate(recon_peaks) if abs(int(r) - int(t)) <= tolerance))
  used_t, used_r, out = set(), set(), []
  for _, i, j in pairs:
    if i not in used_t and j not in used_r:
      used_t.add(i)
      used_r.add(j)
      out.append((i, j))
  return out


@dataclasses.dataclass
class BeatTiming:
  errors_ms: np.ndarray        # signed recon - true, matched beats
  n_true: int                  # true R-peaks inside masked parts
  n_matched: int
  n_extra: int                 # recon peaks inside masked parts matching no true beat

  def summary(self) -> dict[str, float]:
    e = np.abs(self.errors_ms)
    within = int(np.sum(e <= WITHIN_MS))
    return {
        "true_beats": self.n_true, "matched_beats": self.n_matched, "extra_peaks": self.n_extra,
        "sensitivity": self.n_matched / self.n_true if self.n_true else math.nan,
        "median_abs_error_ms": float(np.median(e)) if len(e) else math.nan,
        "mean_abs_error_ms": float(np.mean(e)) if len(e) else math.nan,
        "median_signed_error_ms": float(np.median(self.errors_ms)) if len(e) else math.nan,
        "share_within_50ms": within / self.n_true if self.n_true else math.nan,
    }


def beat_timing(true: np.ndarray, recon: np.ndarray, masked: np.ndarray, fs: float, *,
                tolerance_ms: float = 150.0) -> tuple[BeatTiming, list[dict[str, np.ndarray]]]:
  """R-peak timing of the reconstruction over all rows; also each row's detected peaks."""
  tol = tolerance_ms * fs / 1000.0
  errors, n_true, n_matched, n_extra, peaks = [], 0, 0, 0, []
  for t, r, m in zip(true, recon, masked.astype(bool)):
    pt, pr = detect_rpeaks(t, fs), detect_rpeaks(r, fs)
    peaks.append({"true": pt, "recon": pr})
    pt_m = pt[m[pt]] if len(pt) else pt
    # Match masked true beats against every recon peak (a beat at the mask's edge may be
    # reconstructed a sample outside it), extras counted inside the masked part only.
    pairs = match_beats(pt_m, pr, tol)
    matched_r = {j for _, j in pairs}
    n_true += len(pt_m)
    n_matched += len(pairs)
    n_extra += sum(1 for j, p in enumerate(pr) if m[p] and j not in matched_r)
    errors += [(int(pr[j]) - int(pt_m[i])) * 1000.0 / fs for i, j in pairs]
  return BeatTiming(np.asarray(errors, float), n_true, n_matched, n_extra), peaks


def summarize(true, recon, masked, fs, *, tolerance_ms=150.0) -> tuple[dict[str, Any], list]:
  r = masked_correlation(true, recon, masked)
  timing, peaks = beat_timing(true, recon, masked, fs, tolerance_ms=tolerance_ms)
  finite = r[np.isfinite(r)]
  corr = {"median_r": float(np.median(finite)) if len(finite) else math.nan,
          "iqr_r": ([float(np.percentile(finite, 25)), float(np.percentile(finite, 75))]
                    if len(finite) else [math.nan, math.nan]),
          "mean_r": float(np.mean(finite)) if len(finite) else math.nan}
  return {"segments": int(len(true)), **corr, **timing.summary()}, peaks


# ----------------------------------------------------------------------------------------------
# Running a model


def reconstruct(model, ppg: np.ndarray, ecg: np.ndarray, *, seed: int = 0, batch_size: int = 64,
                mask_ratio: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(reconstructed ECG (N, L), masked (N, L) bool) with masks drawn from `seed`.

  The masks depend only on the seed, the segment's position and the model's masking config,
  so two models with the same masking see identical masks.
  """
  import jax
  from flax import nnx
  if not (hasattr(model, "sample_masks") and callable(model)):
    raise ReconstructionError(f"{type(model).__name__} does not reconstruct ECG "
                              "(needs the xMAE call contract model(ppg, ecg, ecg_keep))")
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ppg, ecg, key):
    m = nnx.merge(graphdef, state)
    keep, _ = m.sample_masks(key, ppg.shape[0], mask_ratio=mask_ratio)
    out = m(ppg, ecg, keep)
    return out["ecg_reconstruction"], out["ecg_mask"]

  recs, masks = [], []
  n = len(ppg)
  base = jax.random.key(seed)
  for start in range(0, n, batch_size):
    p, e = ppg[start:start + batch_size], ecg[start:start + batch_size]
    pad = batch_size - len(p)
    if pad:
      p = np.concatenate([p, np.zeros((pad, p.shape[1]), np.float32)])
      e = np.concatenate([e, np.zeros((pad, e.shape[1]), np.float32)])
    rec, mask = run(state, p, e, jax.random.fold_in(base, start // batch_size))
    recs.append(np.asarray(rec)[:batch_size - pad])
    masks.append(np.asarray(mask)[:batch_size - pad] > 0.5)
  return np.concatenate(recs), np.concatenate(masks)


def evaluate(model, config, ppg: np.ndarray, ecg: np.ndarray, *, fs: float = 100.0, seed: int = 0,
             tolerance_ms: float = 150.0, control: bool = True, figure: str | None = None,
             title: str = "") -> dict[str, Any]:
  """Reconstruction metrics on paired segments, plus the shuffled-PPG control."""
  if len(ppg) == 0:
    raise ReconstructionError("no paired segments to reconstruct")
  recon, masked = reconstruct(model, ppg, ecg, seed=seed)
  summary, peaks = summarize(ecg, recon, masked, fs, tolerance_ms=tolerance_ms)
  out = {"model": str(config.model.name), "reconstruction": summary}
  if control and len(ppg) > 1:
    other = np.roll(ppg, len(ppg) // 2, axis=0)
    recon_c, masked_c = reconstruct(model, other, ecg, seed=seed)
    assert np.array_equal(masked, masked_c)
    out["shuffled_ppg_control"] = summarize(ecg, recon_c, masked_c, fs, tolerance_ms=tolerance_ms)[0]
  if figure:
    order = np.argsort(-np.nan_to_num(masked_correlation(ecg, recon, masked), nan=-2))
    # Examples spread over the quality range: best, two middle, worst.
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(4, len(order))).astype(int))]
    figures.plot_reconstructions(figure, ecg[pick], recon[pick], masked[pick], ppg[pick],
                                 sampling_rate=fs, title=title, peaks=[peaks[i] for i in pick],
                                 xlabel="time (s); shaded = masked ECG")
    out["figure"] = str(figure)
  return out


# ----------------------------------------------------------------------------------------------
# Report over sources


def reader_defaults(source: str) -> dict[str, Any]:
  import argparse
  from xmae_jax.data import sources
  parser = argparse.ArgumentParser()
  sources.get(source).add_arguments(parser)
  return vars(parser.parse_args([]))


def paired_segments(path, *, contract, split: str | None = "test", min_quality: float | None = None):
  """(ppg, ecg, notes) windows of a dataset split or of WFDB records, optionally quality-filtered."""
  from xmae_jax.evaluation import embed as embed_lib
  source = embed_lib.detect_source(path)
  options = reader_defaults(source) if source != "dataset" else None
  segs = embed_lib.read_segments(path, ("ppg", "ecg"), contract=contract, source=source,
                                 splits=([split] if (source == "dataset" and split not in (None, "", "all"))
                                         else None),
                                 options=options)
  ppg, ecg = segs.signals["ppg"], segs.signals["ecg"]
  keep = np.ones(len(ppg), bool)
  if min_quality is not None:
    q = np.array([[m.get("quality_ppg", np.nan), m.get("quality_ecg", np.nan)] for m in segs.meta])
    keep = np.all(np.nan_to_num(q, nan=-1) >= min_quality, axis=1)
  notes = dict(segs.notes)
  notes["subjects"] = len(set(np.asarray(segs.subject_ids)[keep]))
  notes["windows_before_quality_filter"] = len(ppg)
  return ppg[keep], ecg[keep], notes


def build_report(models: Sequence[tuple[str, str]], data_sources: Sequence[tuple[str, str]],
                 out_dir, *, split: str = "test", step: str = "auto", seed: int = 0,
                 min_quality: float | None = None, tolerance_ms: float = 150.0) -> dict:
  """models: (name, workdir); data_sources: (label, path). Writes OUT/reconstruction.{json,md}
  and OUT/figures/NAME_LABEL.png; returns the report dict."""
  from xmae_jax.training import checkpoint
  if not data_sources:
    raise ReconstructionError("give --data and/or --wfdb")
  out = Path(out_dir)
  rows = []
  loaded = []
  for name, workdir in models:
    model, config = checkpoint.load_model(workdir, step=step)
    loaded.append((name, model, config))
  if not loaded:
    raise ReconstructionError("no --model given")
  contract = encoder_lib.Contract.from_config(loaded[0][2])
  for label, path in data_sources:
    ppg, ecg, notes = paired_segments(path, contract=contract, split=split,
                                      min_quality=min_quality)
    for name, model, config in loaded:
      fig = out / "figures" / f"{name}_{slug(label)}.png"
      r = evaluate(model, config, ppg, ecg, fs=contract.sampling_rate, seed=seed,
                   tolerance_ms=tolerance_ms, figure=str(fig),
                   title=f"{name} on {label}: masked ECG reconstructed (shaded = masked)")
      rows.append({"name": name, "data": label, "path": str(path), "notes": notes, **r})
  report = {"seed": seed, "fs": contract.sampling_rate, "tolerance_ms": tolerance_ms,
            "split": split, "min_quality": min_quality, "rows": rows}
  report_lib.write_reconstruction(report, out)
  return report


def slug(text: str) -> str:
  """`text` with every character that is not a letter or digit replaced by `_` (file names)."""
  return "".join(c if c.isalnum() else "_" for c in text).strip("_")
