"""PulseDB `.mat` files (MATLAB v7.3 = HDF5), the reference's pretraining data.

Each file holds struct `Subj_Wins` of one subject's 10-s windows at 125 Hz: ECG_Raw, PPG_Raw
(1250 samples each), and per-window Age, Gender ('M'/'F'), BMI, Height, Weight, SegSBP, SegDBP,
SubjectID, SegmentID, WinID, ... A MATLAB struct array is stored in HDF5 as one dataset of
object references per field (shape (1, N) or (N, 1)), each reference pointing to the value in
`#refs#`; strings are uint16 arrays with attribute MATLAB_class = 'char'. Fields stored directly
as numeric matrices (a scalar struct; MATLAB's N x L appears transposed as (L, N)) are read too.
Subjects are named like the reference: '<dataset>_<SubjectID>', dataset 'mimic' or 'vital' from
the folder name PulseDB_MIMIC / PulseDB_Vital ('pulsedb' otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import add_option_arguments
from xmae_jax.data.sources import option
from xmae_jax.data.sources import options_of

DESCRIPTION = "PulseDB .mat (MATLAB v7.3 / HDF5) files with struct Subj_Wins"
STRUCT = "Subj_Wins"
META_FIELDS = {
    "Age": "age",
    "BMI": "bmi",
    "Height": "height",
    "Weight": "weight",
    "SegSBP": "sbp",
    "SegDBP": "dbp",
}


@dataclasses.dataclass(frozen=True)
class Options:
  pulsedb_fs: float = option(125.0, "rate of ECG_Raw / PPG_Raw")
  pulsedb_exclude_vital: bool = option(
      False, "skip PulseDB_Vital files (the reference pretrains on MIMIC only)"
  )


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_option_arguments(parser, "pulsedb", Options)


def list_inputs(path: str | None, options: dict[str, Any]) -> list[str]:
  if not path:
    raise SourceError("missing input", "--input is required for pulsedb")
  p = Path(path)
  if p.is_file():
    return [str(p)]
  if not p.is_dir():
    raise SourceError("missing input", f"{path} does not exist")
  files = sorted(str(f) for f in p.rglob("*.mat"))
  if options_of(Options, options).pulsedb_exclude_vital:
    files = [f for f in files if _dataset(Path(f)) != "vital"]
  if not files:
    raise SourceError("empty input", f"no .mat files under {path}")
  return files


def read(unit: str, options: dict[str, Any]) -> Iterator[Recording]:
  try:
    # h5py is in the train extra, absent from an inference-only install.
    import h5py
  except ImportError:  # an inference-only install
    raise SourceError(
        "unreadable", "PulseDB's .mat files need h5py: " "pip install 'xmae-jax[train]'"
    ) from None
  path = Path(unit)
  fs = float(options_of(Options, options).pulsedb_fs)
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise SourceError("unreadable", f"{path} is not a MATLAB v7.3 (HDF5) file ({e})") from None
  with f:
    if STRUCT not in f:
      raise SourceError(
          "missing channel",
          f"{path} has no struct {STRUCT!r} "
          f"(top-level keys: {', '.join(k for k in f.keys() if k != '#refs#')})",
      )
    wins = f[STRUCT]
    for field in ("ECG_Raw", "PPG_Raw"):
      if field not in wins:
        raise SourceError("missing channel", f"{path}: {STRUCT} has no field {field!r}")
    try:
      ecg = _field(f, wins, "ECG_Raw")
      ppg = _field(f, wins, "PPG_Raw")
      n = len(ecg)
      if len(ppg) != n:
        raise SourceError("wrong shape", f"{path}: {n} ECG_Raw windows but {len(ppg)} PPG_Raw")
      fields = {
          k: _field(f, wins, k) for k in list(META_FIELDS) + ["Gender", "SubjectID"] if k in wins
      }
    except SourceError:
      raise
    except Exception as e:  # truncated HDF5 or unexpected layout
      raise SourceError("unreadable", f"{path}: {type(e).__name__}: {e}") from None
  for k, v in fields.items():
    if len(v) != n:
      raise SourceError("wrong shape", f"{path}: field {k} has {len(v)} values for {n} windows")
  dataset = _dataset(path)
  for i in range(n):
    e, p = np.asarray(ecg[i], float), np.asarray(ppg[i], float)
    if e.ndim != 1 or p.ndim != 1:
      raise SourceError("wrong shape", f"{path}: window {i} ECG {e.shape} / PPG {p.shape}")
    sid = str(fields["SubjectID"][i]) if "SubjectID" in fields else path.stem
    meta = {}
    for k, name in META_FIELDS.items():
      if k in fields:
        v = _scalar(fields[k][i])
        if v is not None:
          meta[name] = v
    if "Gender" in fields:
      g = str(fields["Gender"][i]).strip().upper()
      if g in ("M", "F"):
        meta["sex"] = 1.0 if g == "M" else 0.0
    yield Recording(
        subject_id=f"{dataset}_{sid}",
        name=f"{path.stem}/{i:05d}",
        signals={"ecg": (e, fs), "ppg": (p, fs)},
        meta=meta,
    )


def _dataset(path: Path) -> str:
  for part in reversed(path.parts[:-1]):
    low = part.lower()
    if low.startswith("pulsedb_"):
      return low[len("pulsedb_") :]
  return "pulsedb"


def _field(f, wins, name: str) -> list[Any]:
  """One field of the struct array as a list over windows (arrays 1-D, strings str)."""
  # h5py is in the train extra, absent from an inference-only install.
  import h5py

  ds = wins[name]
  if h5py.check_dtype(ref=ds.dtype) is not None:
    return [_value(f[r]) for r in np.asarray(ds[()]).ravel(order="F")]
  arr = np.asarray(ds[()])
  if ds.attrs.get("MATLAB_class", b"") in (b"char", "char"):
    return [_chars(arr)]
  if arr.ndim == 2:
    # MATLAB N x L (windows x samples) is stored transposed, as (L, N)
    return list(arr.T) if arr.shape[0] > 1 and arr.shape[1] >= 1 else list(arr.ravel())
  return list(arr.ravel())


def _value(ds) -> Any:
  arr = np.asarray(ds[()])
  if ds.attrs.get("MATLAB_class", b"") in (b"char", "char"):
    return _chars(arr)
  if ds.attrs.get("MATLAB_empty", 0):
    return np.array([])
  return arr.ravel() if arr.size > 1 else (arr.ravel()[0] if arr.size else np.array([]))


def _chars(arr: np.ndarray) -> str:
  return "".join(chr(int(c)) for c in np.asarray(arr).ravel(order="F") if int(c) != 0)


def _scalar(v: Any) -> float | None:
  try:
    x = float(np.asarray(v, float).ravel()[0])
  except (TypeError, ValueError, IndexError):
    return None
  return x if np.isfinite(x) else None
