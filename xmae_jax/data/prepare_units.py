"""The per-input work of `xmae-prepare`, the same for every runner: which units an input holds
(`list_units`, with the up-front size check `check_size`), and one unit read and preprocessed
into encoded records (`process_unit`; `segment_unit` is the part `xmae-embed` shares).

Module level throughout: a spawned worker or a Beam worker pickles these functions by name.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from xmae_jax.data import labels as labels_lib
from xmae_jax.data import prepare_rules as rules
from xmae_jax.data import prepare_split
from xmae_jax.data import preprocess as pp
from xmae_jax.data import record as record_lib
from xmae_jax.data import sources as sources_lib


def list_units(
    source: str,
    input,
    *,
    seed: int,
    test_frac: float,
    val_frac: float,
    source_options: dict[str, Any] | None,
    check,
    config: pp.PreprocessConfig | None = None,
    output=None,
) -> tuple[list[str], dict]:
  """The checks every runner makes before any work, then the input units and reader options.

  `check()` checks the output location (local or remote); it runs after the arguments and
  before the (possibly long) listing of the input, so a bad request fails fast. A reader that
  can tell its size before listing (the simulator: `planned_size`) has it checked against the
  output's free disk space and this machine's memory first (`check_size`).
  """
  try:
    reader = sources_lib.get(source)
  except sources_lib.SourceError as e:
    raise rules.PrepareError(str(e)) from None
  prepare_split.split_subjects([], seed, test_frac, val_frac)  # bad fractions: before any work
  check()
  options = dict(source_options or {})
  if getattr(reader, "USES_SEED", False):
    options["seed"] = int(seed)
  if getattr(reader, "FORMAT", False):
    options["format"] = source  # one reader for csv and npz
  options.update(labels_lib.options_of(options))  # the file checked now, before any work
  try:
    check_size(reader, input, options, config or pp.PreprocessConfig(), output)
    units = reader.list_inputs(None if input is None else str(input), options)
  except sources_lib.SourceError as e:
    raise rules.PrepareError(
        str(e) if e.reason == "bad option" else f"{e} (--input {input})"
    ) from None
  if not units:
    raise rules.PrepareError(f"empty input: no {source} inputs found under {input}")
  return units, options


# What a run costs per unit of its request, for `check_size` (upper bounds, in bytes).
RECORD_OVERHEAD = 256  # a record's ids, meta and msgpack framing beyond its waveforms
UNIT_MEMORY = 4096  # a unit's name, cache path and summary, held for the whole run
WINDOW_MEMORY = 256  # a window's index row, held until its split's index is written
RAW_SAMPLE_MEMORY = 256  # a raw sample while its unit is read and preprocessed (the
# simulator's float64 signals, noises and filtered copies)


def check_size(
    reader, input, options: dict[str, Any], config: pp.PreprocessConfig, output=None
) -> None:
  """Refuses, before any work, a request that cannot fit: its shards and cache on the output's
  file system, or its bookkeeping (or one unit's raw signal) in this machine's memory. Only
  for readers that know their size before listing (`planned_size`); one line naming the
  request and the limit."""
  plan = getattr(reader, "planned_size", None)
  if plan is None:
    return
  p = plan(input, options)
  units, seconds, fs = int(p["units"]), float(p["seconds_per_unit"]), float(p["raw_fs"])
  per_unit = max(0, math.floor((seconds - config.segment_seconds) / config.stride + 1e-9) + 1)
  windows = units * per_unit
  modalities = len(pp.REQUIREMENTS[config.modalities]) or 2
  record = modalities * 2 * config.segment_length + RECORD_OVERHEAD  # float16 waveforms
  disk = 2 * windows * record  # the cache and the shards
  where = _existing_parent(output) if output is not None and "://" not in str(output) else None
  if where is not None:
    # what the output already holds (a cache to resume, shards to replace) counts as free
    free = shutil.disk_usage(where).free + _tree_bytes(Path(output))
    if disk > free:
      raise rules.PrepareError(
          f"{p['what']} would make about {windows:,} windows, about "
          f"{_bytes(disk)} of shards and cache: more than the "
          f"{_bytes(free)} {output} can take (free space on its file "
          f"system and its own files)"
      )
  available = available_memory()
  if available is None:
    return
  held = units * UNIT_MEMORY + windows * WINDOW_MEMORY
  if held > available:
    raise rules.PrepareError(
        f"{p['what']} would need about {_bytes(held)} of memory for its "
        f"{units:,} inputs and {windows:,} windows: more than the "
        f"{_bytes(available)} available"
    )
  raw = math.ceil(seconds * fs) * RAW_SAMPLE_MEMORY
  if raw > available:
    raise rules.PrepareError(
        f"{p['what']}: one input of {seconds:g} s at {fs:g} Hz would need "
        f"about {_bytes(raw)} of memory: more than the "
        f"{_bytes(available)} available"
    )


def available_memory() -> int | None:
  """Bytes of memory available to a new process (Linux MemAvailable); None when unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _existing_parent(path) -> Path:
  p = Path(path).absolute()
  while not p.exists() and p != p.parent:
    p = p.parent
  return p


def _tree_bytes(d: Path) -> int:
  """Bytes of the files under `d` (0 when it does not exist)."""
  total = 0
  for root, _, files in os.walk(d):
    for f in files:
      with contextlib.suppress(OSError):
        total += os.lstat(os.path.join(root, f)).st_size
  return total


def _bytes(n: int) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if n < 1000 or unit == "PB":
      return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
    n /= 1000
  return f"{n} B"


@dataclasses.dataclass
class RecordingSegments:
  """What became of one recording of an input unit (see `segment_unit`).

  outcome: "ok" (segments, possibly none), "missing" (the reader reported a file it could not
  find or use: `item` is a `sources.Missing`), "lacking" (the recording lacks a required
  modality) or "unusable" (preprocessing rejected it; `error` says why).
  notes: what the report should say about this recording beyond the counts (text cells read
  as missing, a required signal absent, a recording that is all NaN, all text or flat).
  """

  item: Any
  outcome: str
  segments: list = dataclasses.field(default_factory=list)
  stats: dict = dataclasses.field(default_factory=dict)
  error: str = ""
  notes: list = dataclasses.field(default_factory=list)


def segment_unit(
    source: str,
    unit: str,
    options: dict[str, Any],
    config: pp.PreprocessConfig,
    *,
    modalities: Sequence[str] | None = None,
) -> Iterator[RecordingSegments]:
  """One raw input unit -> each recording's preprocessed segments, lazily, in reading order.

  The per-input path that `xmae-prepare` (`process_unit`) and `xmae-embed` (raw inputs) share:
  the source's reader, then `preprocess.segment_recording`. With `modalities`, a recording
  must have all of them and only those are windowed; the others still give their per-window
  meta (an ECG's heart rate) as extra channels. Raises `sources.SourceError` (or whatever a
  broken reader raises) when the unit cannot be read; the caller decides what to keep then.
  With a labels file in `options` (xmae_jax.data.labels), each recording's row of it joins its
  labels, and its stats count it under `labels/matched` or `labels/unmatched`.
  """
  reader = sources_lib.get(source)
  table = labels_lib.table_of(options)
  for item in reader.read(unit, options):
    if isinstance(item, sources_lib.Missing):
      yield RecordingSegments(item, "missing")
      continue
    joined = None if table is None else table.lookup(item.subject_id, item.name, unit)
    if joined:
      item.labels = {**item.labels, **joined}  # the user's file wins over the reader's own
    signals, extra = item.signals, dict(item.extra)
    if modalities is not None:
      if any(m not in signals for m in modalities):
        yield RecordingSegments(item, "lacking")
        continue
      extra.update({m: s for m, s in signals.items() if m not in modalities})
      signals = {m: signals[m] for m in modalities}
    try:
      segs, stats = pp.segment_recording(
          signals,
          config,
          meta=item.meta,
          labels=item.labels,
          events=item.events,
          series=item.series,
          extra=extra,
      )
    except pp.PreprocessError as e:
      yield RecordingSegments(item, "unusable", error=str(e))
      continue
    if table is not None:
      stats[f"labels/{'unmatched' if joined is None else 'matched'}"] += 1
    yield RecordingSegments(item, "ok", segs, stats, notes=explain_recording(item, config, stats))


def explain_recording(
    item: sources_lib.Recording, config: pp.PreprocessConfig, stats: collections.Counter
) -> list[str]:
  """Notes on what a recording is where the preprocessing's counts alone would hide it.

  Text cells read as missing are otherwise silent gaps; a required signal that is absent
  shows only as per-window `missing_<m>` drops that name no file; and a recording that is all
  NaN, all text or flat is cut away entirely and counted as `too_short`. That last count is
  renamed here (in `stats`, to `all_nan_<m>`, `all_text_<m>` or `flat_<m>`), so the report
  says what the recording is.
  """
  notes = [
      f"non-numeric cells: {n} {m} value(s) were text and were read as missing"
      for m, n in sorted(item.non_numeric.items())
      if m in item.signals and n < len(item.signals[m][0])
  ]  # all text: said below
  required = pp.REQUIREMENTS[config.modalities]
  notes += [
      f"missing channel: no {m} signal (required by --require-modalities {config.modalities})"
      for m in required
      if m not in item.signals
  ]
  if stats.get("dropped/too_short"):
    found = []
    for m in required or sorted(item.signals):
      if m not in item.signals:
        continue
      x = np.asarray(item.signals[m][0], np.float64).ravel()
      finite = x[np.isfinite(x)]
      if not finite.size:
        kind, what = (
            ("all_text", "holds only text")
            if item.non_numeric.get(m, 0) >= x.size
            else ("all_nan", "has no finite sample")
        )
      elif finite.min() == finite.max():
        kind, what = "flat", f"is flat (every sample {finite[0]:g})"
      else:
        continue
      found.append((kind, m))
      notes.append(f"{kind}: {m} {what} ({x.size} samples)")
    if found:  # the recording's one too_short drop, under the name of what it is
      stats["dropped/too_short"] -= 1
      if not stats["dropped/too_short"]:
        del stats["dropped/too_short"]
      stats[f"dropped/{found[0][0]}_{found[0][1]}"] += 1
  return notes


def process_unit(
    source: str, unit: str, options: dict[str, Any], config: pp.PreprocessConfig
) -> dict[str, Any]:
  """Reads and preprocesses one input unit (`segment_unit`); never raises for bad input.

  Returns {unit, status ('ok'|'skipped'), reason, missing: [[path, reason]],
  warnings: [[recording, note]], stats: {key: n}, records: [encoded bytes],
  subjects: [subject of each record], seconds}.
  """
  t0 = time.perf_counter()
  stats: collections.Counter = collections.Counter()
  records, subjects, missing, warnings = [], [], [], []
  status, reason = "ok", ""
  try:
    for rec in segment_unit(source, unit, options, config):
      item = rec.item
      if rec.outcome == "missing":
        missing.append([item.path, item.reason])
        continue
      if rec.outcome == "unusable":
        stats[f"recording_skipped/{_reason_key(rec.error)}"] += 1
        missing.append([item.name, rec.error])
        continue
      stats.update(rec.stats)
      warnings.extend([item.name, note] for note in rec.notes)
      for seg in rec.segments:
        for name in item.labels:  # the recording's labels, counted per window
          stats[f"label/{name}={seg.labels[name]}"] += 1
        records.append(
            record_lib.encode(
                record_lib.Record(
                    subject_id=item.subject_id,
                    segment_id=f"{item.name}:{seg.index:05d}",
                    source=source,
                    ppg=seg.signals.get("ppg"),
                    ecg=seg.signals.get("ecg"),
                    quality_ppg=seg.quality.get("ppg", math.nan),
                    quality_ecg=seg.quality.get("ecg", math.nan),
                    meta=_finite(seg.meta),
                    labels=seg.labels,
                )
            )
        )
        subjects.append(str(item.subject_id))
  except sources_lib.SourceError as e:
    status, reason = "skipped", str(e)
    records, subjects = [], []
  except pp.LibraryVersionError:
    raise  # the installed scipy, not this unit: every unit would fail the same
  except Exception as e:  # a reader bug or a file no reader check anticipated: skip the unit
    status = "skipped"
    reason = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    records, subjects = [], []
  stats["segments_kept"] += len(records)
  return {
      "unit": unit,
      "status": status,
      "reason": reason,
      "missing": missing,
      "warnings": warnings,
      "stats": dict(stats),
      "records": records,
      "subjects": subjects,
      "seconds": time.perf_counter() - t0,
  }


def _reason_key(message: str) -> str:
  return message.split(":")[0].strip().replace(" ", "_")


def _finite(meta: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in meta.items() if not (isinstance(v, float) and not math.isfinite(v))}
