"""Plain tables and arrays: CSV files (`--source csv`) and NumPy .npz files (`--source npz`).

CSV: one column per signal, named by --ecg-column / --ppg-column (case-insensitive); the rate
is --fs, or inferred from a --time-column in seconds. One subject per file (its stem) unless
--subject-column names a column, whose consecutive rows of one value form one recording.
NPZ: arrays named like the columns; 1-D = one recording, 2-D (N, L) = N recordings; the rate is
--fs or a scalar array 'fs' in the file; --subject-column names an array of N subject ids.
Either modality may be absent from a file (xmae-prepare --require-modalities decides).
Files are loaded without pickle.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import add_option_arguments
from xmae_jax.data.sources import option
from xmae_jax.data.sources import options_of

DESCRIPTION = "CSV tables or NPZ arrays with named ECG and PPG columns"
FORMAT = True  # --source csv|npz: options["format"] says which


def positive_rate(text: str) -> float:
  """argparse type of --fs: a positive, finite number of Hz (0 and -5 are rejected as flags)."""
  try:
    fs = float(text)
  except ValueError:
    fs = math.nan
  if not math.isfinite(fs) or fs <= 0:
    raise argparse.ArgumentTypeError(f"must be a positive number of Hz, got {text!r}")
  return fs


@dataclasses.dataclass(frozen=True)
class Options:
  fs: float | None = option(None, "sampling rate of the columns (Hz)", type=positive_rate)
  ecg_column: str = option("ecg")
  ppg_column: str = option("ppg")
  subject_column: str | None = option(
      None, "column/array of subject ids (default: one subject per file)"
  )
  time_column: str | None = option(None, "CSV: time in seconds, to infer --fs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_option_arguments(parser, "csv / npz", Options)


def list_inputs(path: str | None, options: dict[str, Any]) -> list[str]:
  fmt = options.get("format", "csv")
  fs = options_of(Options, options).fs
  if fs is not None:  # library callers bypass the flag's check
    try:
      positive_rate(str(fs))
    except argparse.ArgumentTypeError as e:
      raise SourceError("bad option", f"--fs {e}") from None
  if not path:
    raise SourceError("missing input", f"--input is required for {fmt}")
  p = Path(path)
  if p.is_file():
    return [str(p)]
  if not p.is_dir():
    raise SourceError("missing input", f"{path} does not exist")
  files = sorted(str(f) for f in p.rglob(f"*.{fmt}"))
  if not files:
    raise SourceError("empty input", f"no .{fmt} files under {path}")
  return files


def read(unit: str, options: dict[str, Any]) -> Iterator[Recording]:
  path = Path(unit)
  opts = options_of(Options, options)
  if options.get("format", "csv") == "npz" or path.suffix == ".npz":
    yield from _read_npz(path, opts)
  else:
    yield from _read_csv(path, opts)


def _columns(names, opts: Options, path) -> dict[str, str]:
  """modality -> actual column name (case-insensitive match); at least one must exist."""
  lower = {str(n).lower(): n for n in names}
  wanted = {"ecg": opts.ecg_column, "ppg": opts.ppg_column}
  found = {m: lower[c.lower()] for m, c in wanted.items() if c.lower() in lower}
  if not found:
    raise SourceError(
        "missing channel",
        f"{path}: neither column {opts.ecg_column!r} "
        f"nor {opts.ppg_column!r} (has: {', '.join(map(str, names))})",
    )
  return found


def _fs(opts: Options, path, fallback=None) -> float:
  fs = opts.fs
  if fs is None:  # not `or`: an explicit 0 is a bad rate, not a missing one
    fs = fallback
  if fs is None:
    raise SourceError("unknown sampling rate", f"{path}: give --fs (or a time column / 'fs')")
  try:
    fs = float(np.asarray(fs).ravel()[0])
  except (TypeError, ValueError, IndexError):
    raise SourceError("unknown sampling rate", f"{path}: fs={fs!r}") from None
  if not np.isfinite(fs) or fs <= 0:
    raise SourceError("unknown sampling rate", f"{path}: fs={fs}")
  return fs


def _read_csv(path: Path, opts: Options) -> Iterator[Recording]:
  # pandas takes a while to import; only reading a CSV file needs it, not --help.
  import pandas as pd

  try:
    df = pd.read_csv(path)
  except Exception as e:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError, ...
    raise SourceError("unreadable", f"{path}: {type(e).__name__}: {e}") from None
  cols = _columns(df.columns, opts, path)
  inferred = None
  tcol = opts.time_column
  if tcol:
    if tcol not in df.columns:
      raise SourceError("unknown sampling rate", f"{path}: no time column {tcol!r}")
    dt = np.diff(pd.to_numeric(df[tcol], errors="coerce").to_numpy(float))
    dt = dt[np.isfinite(dt)]
    inferred = 1.0 / np.median(dt) if len(dt) and np.median(dt) > 0 else None
  fs = _fs(opts, path, inferred)
  values, non_numeric = {}, {}
  for m, c in cols.items():
    num = pd.to_numeric(df[c], errors="coerce")
    values[m] = num.to_numpy(float)
    text = num.isna() & df[c].notna()  # a cell that held something but not a number
    if text.any():
      non_numeric[m] = text.to_numpy()
  scol = opts.subject_column
  if not scol:
    yield Recording(
        subject_id=path.stem,
        name=path.stem,
        signals={m: (v, fs) for m, v in values.items()},
        non_numeric={m: int(t.sum()) for m, t in non_numeric.items()},
    )
    return
  if scol not in df.columns:
    raise SourceError("missing channel", f"{path}: no subject column {scol!r}")
  subjects = df[scol].astype(str).to_numpy()
  change = np.flatnonzero(subjects[1:] != subjects[:-1]) + 1
  bounds = np.concatenate([[0], change, [len(subjects)]])
  for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    yield Recording(
        subject_id=subjects[a],
        name=f"{path.stem}/{k:04d}",
        signals={m: (v[a:b], fs) for m, v in values.items()},
        non_numeric={m: int(t[a:b].sum()) for m, t in non_numeric.items() if t[a:b].any()},
    )


def _read_npz(path: Path, opts: Options) -> Iterator[Recording]:
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
    raise SourceError("unreadable", f"{path}: {type(e).__name__}: {e}") from None
  cols = _columns(list(arrays), opts, path)
  fs = _fs(opts, path, arrays.get("fs"))
  sig = {m: np.asarray(arrays[c]) for m, c in cols.items()}
  shapes = {m: a.shape for m, a in sig.items()}
  if (
      any(a.ndim not in (1, 2) for a in sig.values())
      or len({a.shape[0] if a.ndim == 2 else 1 for a in sig.values()}) != 1
  ):
    raise SourceError(
        "wrong shape", f"{path}: expected 1-D or (N, L) arrays of equal N, " f"got {shapes}"
    )
  rows = {m: (a[None] if a.ndim == 1 else a) for m, a in sig.items()}
  n = next(iter(rows.values())).shape[0]
  scol = opts.subject_column
  if scol:
    if scol not in arrays or np.asarray(arrays[scol]).reshape(-1).shape[0] != n:
      raise SourceError("wrong shape", f"{path}: subject array {scol!r} missing or not {n} long")
    subjects = [str(s) for s in np.asarray(arrays[scol]).reshape(-1)]
  else:
    subjects = [path.stem] * n
  for i in range(n):
    yield Recording(
        subject_id=subjects[i],
        name=f"{path.stem}/{i:05d}",
        signals={m: (r[i].astype(float), fs) for m, r in rows.items()},
    )
