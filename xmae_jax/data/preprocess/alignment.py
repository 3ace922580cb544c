"""The PPG shift a dataset was prepared with, read back and applied to recordings given as
arrays, so that `load_encoder().embed` and the exported encoders pair PPG and ECG as
`xmae-prepare` paired them for training."""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

import numpy as np

from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.inference import check_row_length
from xmae_jax.data.preprocess.segment import BatchedSteps
from xmae_jax.data.preprocess.segment import ppg_shift
from xmae_jax.data.preprocess.windows import as_signal
from xmae_jax.data.preprocess.windows import check_sampling_rate


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
    return (
        f"per record: PPG moved so that R-peak to pulse peak is {align:g} s (measured on "
        f"the record's ECG; fixed {delay:g} s where too few clean beats)"
    )
  return f"fixed: PPG moved {delay:g} s earlier" + (
      " (per-record alignment needs the ECG, which is not embedded)" if align is not None else ""
  )


def align_rows(
    rows: Mapping[str, np.ndarray], fs: float, config: PreprocessConfig
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
    shift = ppg_shift(present, config, BatchedSteps, stats) if "ppg" in present else 0.0
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


def prepare_aligned_rows(
    given: Mapping[str, np.ndarray],
    fs: float,
    alignment: Mapping[str, Any],
    *,
    prepare: Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]],
    as_prepared: Callable[[np.ndarray], bool],
    config: Callable[..., PreprocessConfig],
):
  """Every given modality's (N, L) rows -> windows, the PPG moved first under `alignment` (not
  for rows taken as prepared windows): ({modality: windows}, source row of each window, PPG
  shift of each window in seconds, what was applied in words). The JAX and the PyTorch encoder
  both call it with their own `prepare(rows, modality) -> (windows, source rows)`,
  `as_prepared(rows)` and `config(**alignment)`; raises PreprocessError."""
  first = next(iter(given.values()))
  note = alignment_note(alignment, tuple(given))
  if note == "none" or not len(first) or as_prepared(first):
    prepared = {m: prepare(a, m) for m, a in given.items()}
    rows = next(iter(prepared.values()))[1]  # the same for every modality: same shape, fs
    return (
        {m: w for m, (w, _) in prepared.items()},
        rows,
        np.zeros(len(rows)),
        "none" if note == "none" else "none (rows taken as prepared windows)",
    )
  preprocess_config = config(**alignment)
  check_row_length(first.shape, fs, preprocess_config)
  recordings, shifts, note = align_rows(given, fs, preprocess_config)
  windows: dict[str, list[np.ndarray]] = {m: [] for m in given}
  row_parts = []
  for i, recording in enumerate(recordings):
    for m, x in recording.items():
      w, _ = prepare(x[None], m)
      windows[m].append(w)
    row_parts.append(np.full(len(w), i))
  rows = np.concatenate(row_parts)
  return {m: np.concatenate(w) for m, w in windows.items()}, rows, shifts[rows], note
