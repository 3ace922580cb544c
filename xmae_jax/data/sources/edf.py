"""EDF/EDF+ (and BDF/BDF+) files with an ECG and a PPG channel, the format most wearable and
sleep recordings come in (`--source edf`; needs pyedflib: `pip install xmae-jax[edf]`).

One file is one recording. Channels are matched by their label, case-insensitively and with
surrounding spaces ignored, in the order of --edf-ecg-names / --edf-ppg-names (the first listed
name a file has wins; as the WFDB reader's --wfdb-ppg-names). Every channel is read in physical
units at its own rate (an ECG at 256 Hz and a PPG at 128 Hz stay so): the preprocessing
resamples each to the target rate, as for the other readers. Subject: the file's name without
its extension, or with `--edf-subject patient` the EDF+ header's patient code (when it gives
one; 'X' means unknown), so that several nights of one person share a subject. An EDF+D
(discontinuous) file is read as if its data records were contiguous.
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

DESCRIPTION = "EDF/EDF+ or BDF files with ECG and PPG channels (pyedflib)"
SUFFIXES = (".edf", ".bdf")
DEFAULT_ECG_NAMES = "ECG,EKG,ECG II,ECG I,ECG1,ECG2,II,I,MLII,V1,V2,V5,III"
DEFAULT_PPG_NAMES = "PLETH,PPG,BVP,PLET,PLETHYSMOGRAM"
SUBJECT_FROM = ("file", "patient")
INSTALL_HINT = "pip install xmae-jax[edf]"


@dataclasses.dataclass(frozen=True)
class Options:
  edf_ecg_names: str = option(
      DEFAULT_ECG_NAMES,
      "ECG channel labels in order of preference " "(comma-separated, case-insensitive)",
  )
  edf_ppg_names: str = option(
      DEFAULT_PPG_NAMES,
      "PPG channel labels in order of preference " "(comma-separated, case-insensitive)",
  )
  edf_subject: str = option(
      SUBJECT_FROM[0],
      "subject of a file: its name, or the EDF+ patient " "code",
      choices=SUBJECT_FROM,
  )


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_option_arguments(parser, "edf", Options)


def _pyedflib():
  try:
    # pyedflib is an optional extra (edf): its absence is the one line below.
    import pyedflib
  except ImportError:
    raise SourceError(
        "missing dependency", f"reading EDF needs pyedflib ({INSTALL_HINT})"
    ) from None
  return pyedflib


def list_inputs(path: str | None, options: dict[str, Any]) -> list[str]:
  _pyedflib()
  subject_from = options_of(Options, options).edf_subject
  if subject_from not in SUBJECT_FROM:
    raise SourceError(
        "bad option", f"--edf-subject {subject_from!r}: choose " f"{' or '.join(SUBJECT_FROM)}"
    )
  if not path:
    raise SourceError("missing input", "--input is required for edf")
  p = Path(path)
  if p.is_file():
    return [str(p)]
  if not p.is_dir():
    raise SourceError("missing input", f"{path} does not exist")
  files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
  if not files:
    raise SourceError("empty input", f"no .edf or .bdf files under {path}")
  return files


def read(unit: str, options: dict[str, Any]) -> Iterator[Recording]:
  pyedflib = _pyedflib()
  path = Path(unit)
  try:
    f = pyedflib.EdfReader(str(path))
  except Exception as e:  # OSError with pyedflib's reason for a malformed or truncated file
    raise SourceError(
        "unreadable", f"{path}: {type(e).__name__}: " f"{str(e).splitlines()[0] if str(e) else ''}"
    ) from None
  try:
    labels = [str(s).strip() for s in f.getSignalLabels()]
    opts = options_of(Options, options)
    chosen = {
        m: pick_channel(labels, names)
        for m, names in (("ecg", opts.edf_ecg_names), ("ppg", opts.edf_ppg_names))
    }
    chosen = {m: i for m, i in chosen.items() if i is not None}
    if not chosen:
      raise SourceError(
          "missing channel",
          f"{path}: no ECG or PPG channel (channels: "
          f"{', '.join(labels) or 'none'}; choose with --edf-ecg-names / "
          f"--edf-ppg-names)",
      )
    signals = {}
    for m, i in chosen.items():
      fs = float(f.getSampleFrequency(i))
      if not np.isfinite(fs) or fs <= 0:
        raise SourceError(
            "unknown sampling rate", f"{path}: channel {labels[i]!r} gives " f"fs={fs}"
        )
      signals[m] = (np.asarray(f.readSignal(i), np.float64), fs)
    subject = path.stem
    if opts.edf_subject == "patient":
      code = str(f.getPatientCode() or "").strip()
      if code and code.upper() != "X":
        subject = code
  finally:
    f.close()
  yield Recording(
      subject_id=subject,
      name=path.stem,
      signals=signals,
      meta={f"{m}_channel": labels[i] for m, i in chosen.items()},
  )


def pick_channel(labels: list[str], names: str) -> int | None:
  """The index of the first of the comma-separated `names` among the channel `labels`."""
  index = {l.upper(): i for i, l in reversed(list(enumerate(labels)))}  # first one wins
  for name in (n.strip().upper() for n in str(names).split(",")):
    if name and name in index:
      return index[name]
  return None
