"""WFDB records with an ECG lead and a PPG channel (PhysioNet, MIMIC waveform databases).

Handles:
  * single-segment records in any format wfdb reads, FLAC-compressed ones (format 516, needs
    soundfile) included;
  * multi-rate records: every channel is read at its own rate (smooth_frames=False) and the
    preprocessing windows each at that rate, so nothing is resampled twice;
  * multi-segment records (a master header listing segments): consecutive present segments with
    the same channels are joined, gaps ('~') and layout headers split them;
  * the MIMIC-III Waveform Database Matched Subset layout: patient folders pNNNNNN holding
    master headers, a `_layout` header and segments of which some lack ECG or PPG and some may be
    missing from a partial download: what is present is used, what is missing is reported;
    the numerics records beside them (`<record>n`, vital signs once a minute) are not listed.
Channels are matched by name (`channel_key`: case, surrounding whitespace and trailing
punctuation such as BIDMC's `PLETH,` do not count), ECG by a preference list of leads; an
arterial pressure channel (ABP, ART, ...), when there is one, travels as the extra channel 'abp'
(mmHg), from which every window gets sbp/dbp meta (see preprocess.derive_window_meta).
Subject: the patient folder (pNNNNNN) if there is one, else the record name.
Header comments become labels (`header_annotations`): `key: value` lines under their key, and
the PhysioNet/CinC Challenge 2015 lines (alarm type, then "True alarm"/"False alarm") as
`alarm_type` and `alarm_true` with meta `alarm_time_s` = 300 (the alarm onset at 5 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xmae_jax.data.sources import Missing
from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import add_option_arguments
from xmae_jax.data.sources import option
from xmae_jax.data.sources import options_of

DESCRIPTION = "WFDB records (PhysioNet, MIMIC-III matched subset) with ECG and PPG channels"
DEFAULT_ECG_LEADS = "II,I,V,III,MLII,AVR,AVL,AVF,V1,V2,V3,V4,V5,V6,MCL1,ECG,EKG"
DEFAULT_PPG_NAMES = "PLETH,PPG,BVP,PLET"
DEFAULT_ABP_NAMES = "ABP,ART,AOBP,IBP,ARTERIAL"
# PhysioNet/CinC Challenge 2015: header comment 1 is the alarm type, 2 the verdict; every record
# ends at its alarm, whose onset is at 5 min
CHALLENGE_ALARMS = (
    "Asystole",
    "Bradycardia",
    "Tachycardia",
    "Ventricular_Tachycardia",
    "Ventricular_Flutter_Fib",
)
CHALLENGE_VERDICTS = {"true alarm": 1, "false alarm": 0}
CHALLENGE_ALARM_TIME_S = 300.0
# a `key: value` comment; the key is a short name (free text such as "Produced by xform from
# record mimicdb/041/04100002, beginning at 0:0" is not a key)
COMMENT_FIELD = re.compile(r"^<?([A-Za-z][A-Za-z0-9_ .-]{0,39})>?\s*:\s*(\S.*?)\s*$")
PATIENT_DIR = re.compile(r"^p\d+$")
# bits per sample of the uncompressed WFDB formats, to tell a truncated file from a broken one
# what `channel_key` strips from the end of a channel name (besides whitespace)
TRAILING_PUNCTUATION = ",;:.'\"`"
FORMAT_BITS = {
    "8": 8,
    "16": 16,
    "61": 16,
    "80": 8,
    "160": 16,
    "212": 12,
    "310": 32 / 3,
    "311": 32 / 3,
    "24": 24,
    "32": 32,
}


@dataclasses.dataclass(frozen=True)
class Options:
  wfdb_ecg_leads: str = option(
      DEFAULT_ECG_LEADS, "ECG leads in order of preference " "(comma-separated, case-insensitive)"
  )
  wfdb_ppg_names: str = option(
      DEFAULT_PPG_NAMES, "PPG channel names (comma-separated, case-insensitive)"
  )
  wfdb_abp_names: str = option(
      DEFAULT_ABP_NAMES,
      "arterial pressure channel names "
      "(comma-separated, case-insensitive); windows get sbp/dbp meta "
      "from it (empty: none)",
  )


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_option_arguments(parser, "wfdb", Options)


def list_inputs(path: str | None, options: dict[str, Any]) -> list[str]:
  """Record paths (without .hea): top-level records, not the segments of multi-segment ones."""
  if not path:
    raise SourceError("missing input", "--input is required for wfdb")
  p = Path(path)
  if p.suffix == ".hea":
    p = p.with_suffix("")
  if p.with_suffix(".hea").is_file():
    return [str(p)]
  if not p.is_dir():
    raise SourceError("missing input", f"{path} is neither a directory nor a WFDB record")
  headers = sorted(p.rglob("*.hea"))
  if not headers:
    raise SourceError("empty input", f"no WFDB headers (*.hea) under {path}")
  parts: set[Path] = set()
  masters = []
  for h in headers:
    first = _first_line(h)
    name = first.split()[0] if first else ""
    if "/" in name:  # "record/nsegments": a master header
      masters.append(h)
      for line in _body_lines(h):
        seg = line.split()[0]
        if seg != "~":
          parts.add((h.parent / seg).with_suffix(".hea"))
  stems = {h.with_suffix("") for h in headers}
  units = [
      str(h.with_suffix(""))
      for h in headers
      if h not in parts
      and not h.stem.endswith("_layout")
      and not _is_numerics(h.with_suffix(""), stems)
  ]
  return units


def _is_numerics(record: Path, stems: set[Path]) -> bool:
  """MIMIC numerics records (1/min vital signs) are named like their waveform record + 'n'."""
  return record.name.endswith("n") and record.with_name(record.name[:-1]) in stems


def read(unit: str, options: dict[str, Any]) -> Iterator[Recording | Missing]:
  # wfdb (it loads pandas) takes a while to import; only reading records needs it, not --help.
  import wfdb

  path = Path(unit)
  try:
    header = wfdb.rdheader(str(path))
  except Exception as e:  # wfdb raises several types for malformed headers
    raise SourceError("unreadable", f"{path}.hea: {type(e).__name__}: {e}") from None
  subject = _subject(path)
  labels, meta = header_annotations(header.comments or [])
  if not hasattr(header, "seg_name"):
    signals, extra = _read_single(path, options)
    if not signals:
      raise SourceError(
          "missing channel",
          f"{path}: no ECG or PPG channel " f"(signals: {', '.join(header.sig_name or [])})",
      )
    yield Recording(
        subject_id=subject, name=_name(path), signals=signals, meta=meta, labels=labels, extra=extra
    )
    return
  for item in _read_multi(path, header, subject, options):
    if isinstance(item, Recording):
      item.labels, item.meta = dict(labels), dict(meta)
    yield item


def header_annotations(comments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(labels, meta) from a WFDB header's comment lines (without their '#').

  A `key: value` line gives labels[key] (key lower-cased, spaces and dots as '_'; the value an
  int or float when it reads as one, else the text). The Challenge 2015 pattern (a line that is
  one of CHALLENGE_ALARMS, a line "True alarm"/"False alarm") gives `alarm_type` and
  `alarm_true` (1/0), and the alarm type gives meta `alarm_time_s`. Other text is ignored.
  """
  labels: dict[str, Any] = {}
  meta: dict[str, Any] = {}
  alarms = {a.lower(): a for a in CHALLENGE_ALARMS}
  for line in (str(c).strip() for c in comments):
    if line.lower() in alarms:
      labels["alarm_type"] = alarms[line.lower()]
      meta["alarm_time_s"] = CHALLENGE_ALARM_TIME_S
    elif line.lower() in CHALLENGE_VERDICTS:
      labels["alarm_true"] = CHALLENGE_VERDICTS[line.lower()]
    elif m := COMMENT_FIELD.match(line):
      key = re.sub(r"[ .-]+", "_", m.group(1).strip()).lower()
      labels[key] = _number_or_text(m.group(2))
  return labels, meta


def _number_or_text(text: str) -> int | float | str:
  for kind in (int, float):
    try:
      value = kind(text)
    except ValueError:
      continue
    return value if kind is int or math.isfinite(value) else text
  return text


def _read_multi(path: Path, header, subject: str, options) -> Iterator[Recording | Missing]:
  """Joins runs of consecutive segments that are present and have the same channels.

  The extra channels (ABP) do not split a run: a segment without one gets NaN for its length,
  and a run whose segments give it at different rates goes without it.
  """
  run: list[tuple[dict, dict]] = []
  run_names: list[str] = []

  def flush():
    if run:
      first = run[0][0]
      joined = {m: (np.concatenate([r[m][0] for r, _ in run]), first[m][1]) for m in first}
      rec = Recording(
          subject_id=subject,
          name=f"{_name(path)}/{run_names[0]}",
          signals=joined,
          extra=join_extra(run),
      )
      run.clear()
      run_names.clear()
      return rec
    return None

  for i, (seg, n) in enumerate(zip(header.seg_name, header.seg_len)):
    if seg == "~" or n == 0 or seg.endswith("_layout"):
      rec = flush() if seg == "~" else None  # a gap breaks continuity
      if rec:
        yield rec
      continue
    seg_path = path.parent / seg
    if not seg_path.with_suffix(".hea").is_file():
      rec = flush()
      if rec:
        yield rec
      yield Missing(str(seg_path) + ".hea", "segment listed in the master header is not present")
      continue
    try:
      signals, extra = _read_single(seg_path, options)
    except SourceError as e:
      rec = flush()
      if rec:
        yield rec
      yield Missing(str(seg_path), str(e))
      continue
    if not signals:
      rec = flush()
      if rec:
        yield rec
      yield Missing(str(seg_path), "missing channel: segment has neither ECG nor PPG")
      continue
    if run and {m: s[1] for m, s in signals.items()} != {m: s[1] for m, s in run[0][0].items()}:
      rec = flush()
      if rec:
        yield rec
    run.append((signals, extra))
    run_names.append(seg)
  rec = flush()
  if rec:
    yield rec


def join_extra(run: list[tuple[dict, dict]]) -> dict[str, tuple[np.ndarray, float]]:
  """The extra channels of a run of segments, NaN where a segment lacks one."""
  out = {}
  for name in sorted({n for _, extra in run for n in extra}):
    rates = {extra[name][1] for _, extra in run if name in extra}
    if len(rates) != 1:
      continue
    fs = rates.pop()
    parts = []
    for signals, extra in run:
      if name in extra:
        parts.append(extra[name][0])
      else:
        x, sfs = next(iter(signals.values()))
        parts.append(np.full(int(round(len(x) / sfs * fs)), np.nan))
    out[name] = (np.concatenate(parts), fs)
  return out


def _read_single(
    path: Path, options
) -> tuple[dict[str, tuple[np.ndarray, float]], dict[str, tuple[np.ndarray, float]]]:
  """(modality -> (physical samples, fs), extra channel -> (samples, fs)) of one single-segment
  record; ({}, {}) if it has neither ECG nor PPG."""
  # wfdb (it loads pandas) takes a while to import; only reading records needs it, not --help.
  import wfdb

  try:
    header = wfdb.rdheader(str(path))
  except Exception as e:
    raise SourceError("unreadable", f"{path}.hea: {type(e).__name__}: {e}") from None
  header_fs(path)
  if header.fs is None or not np.isfinite(header.fs) or header.fs <= 0:
    raise SourceError("unknown sampling rate", f"{path}.hea gives fs={header.fs}")
  names = [channel_key(s) for s in (header.sig_name or [])]
  opts = options_of(Options, options)
  ecg_candidates, ppg_candidates, abp_candidates = (
      [names.index(l) for l in channel_keys(wanted) if l in names]
      for wanted in (opts.wfdb_ecg_leads, opts.wfdb_ppg_names, opts.wfdb_abp_names)
  )
  if not ecg_candidates and not ppg_candidates:
    return {}, {}
  wanted = sorted(set(ecg_candidates + ppg_candidates + abp_candidates))
  try:
    rec = wfdb.rdrecord(str(path), channels=wanted, smooth_frames=False)
  except Exception as e:  # wfdb/soundfile raise many types on short or corrupt data files
    raise SourceError(
        _truncated_or_unreadable(path, header),
        f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
    ) from None
  spf = rec.samps_per_frame or [1] * len(wanted)
  by_channel = {
      ch: (np.asarray(rec.e_p_signal[k], np.float64), float(rec.fs) * spf[k])
      for k, ch in enumerate(wanted)
  }
  out, extra = {}, {}
  for modality, candidates, into in (
      ("ecg", ecg_candidates, out),
      ("ppg", ppg_candidates, out),
      ("abp", abp_candidates, extra),
  ):
    if candidates:
      # the first preferred channel that carries data (MIMIC leads can be all NaN)
      usable = [c for c in candidates if np.isfinite(by_channel[c][0]).mean() > 0.5]
      into[modality] = by_channel[(usable or candidates)[0]]
  return out, extra


def channel_key(name) -> str:
  """The form a channel name is matched in: upper case, without surrounding whitespace and
  trailing punctuation. Some databases write names as `PLETH,` or `II,` (PhysioNet's BIDMC
  dataset ends every one with a comma); the name a user gives matches either way."""
  return str(name).strip().rstrip(TRAILING_PUNCTUATION).strip().upper()


def channel_keys(text: str) -> list[str]:
  """The channel names of a comma-separated option (`--wfdb-ppg-names`), as `channel_key`s."""
  return [k for k in (channel_key(s) for s in str(text or "").split(",")) if k]


def header_fs(path: Path) -> float | None:
  """The sampling rate written in the record line of `path`.hea; None when the field is absent.

  wfdb's parser silently falls back to its default of 250 Hz when the field does not match its
  pattern ("-125", "-0.5", "abc250"), which would window a 125 Hz record at twice its length;
  so the field is read from the text here and anything but a positive number skips the record.
  An absent field is the WFDB standard's default (250 Hz) and is left to wfdb.
  """
  line = _first_line(Path(f"{path}.hea")).split()
  if len(line) < 3:
    return None
  text = line[2].split("/")[0]
  try:
    fs = float(text)
  except ValueError:
    fs = math.nan
  if not math.isfinite(fs) or fs <= 0:
    raise SourceError(
        "unknown sampling rate",
        f"{path}.hea: sampling rate field {line[2]!r} " f"is not a positive number",
    )
  return fs


def _truncated_or_unreadable(path: Path, header) -> str:
  """'truncated' if an uncompressed data file is shorter than the header says."""
  files: dict[str, float] = {}
  for fname, fmt, spf in zip(
      header.file_name or [], header.fmt or [], header.samps_per_frame or []
  ):
    bits = FORMAT_BITS.get(str(fmt))
    if bits is None:
      return "unreadable"
    files[fname] = files.get(fname, 0) + bits * (spf or 1)
  for fname, bits_per_frame in files.items():
    f = path.parent / fname
    if not f.is_file():
      return "unreadable"
    if os.path.getsize(f) * 8 < bits_per_frame * (header.sig_len or 0) * 0.999:
      return "truncated"
  return "unreadable"


def _subject(path: Path) -> str:
  for part in reversed(path.parts[:-1]):
    if PATIENT_DIR.match(part):
      return part
  return path.name


def _name(path: Path) -> str:
  return "/".join(path.parts[-2:])


def _first_line(h: Path) -> str:
  for line in _lines(h):
    return line
  return ""


def _body_lines(h: Path) -> list[str]:
  return _lines(h)[1:]


def _lines(h: Path) -> list[str]:
  try:
    text = h.read_text(errors="replace")
  except OSError:
    return []
  return [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
