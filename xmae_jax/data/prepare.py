"""`xmae-prepare` as a library: raw recordings -> a dataset directory (shards, index, manifest).

    report = prepare_dataset("synthetic", None, "data/demo", workers=2, seed=77)

Work is parallel over input units (files, or subjects for the simulator). Each unit's result
(encoded records, drop counts, missing files) is cached atomically under DIR/.work/<params>/, so
an interrupted run resumes where it stopped and a re-run with the same parameters only rewrites
the shards. A directory holding a dataset (or an unfinished run) of another request (inputs,
reader options, preprocessing, split, shard size) is refused unless `overwrite`, so a mistyped
--output cannot replace a dataset. Bad input never stops the run: a unit that fails is skipped
with its reason; but a run that keeps no segment at all is an error listing the first reasons.
Every split is staged under temporary names (`shards.stage_split`) before the old manifest is
removed and the splits are renamed into place, so a full disk leaves the previous dataset
whole; the manifest is written last: a directory with a manifest is complete. Write failures
are one line naming the file. The shards are written from the cache one unit at a time, so
memory holds only summaries and index rows; a request whose size is known before listing
(the simulator's) is checked up front against the output's free space and this machine's
memory (`check_size`). One run per output at a time (`lock_output`); SIGTERM or SIGINT stops
the workers and ends in one line (`Interrupted`), and the rerun resumes from the cache.

`runner="beam"` runs the same per-unit function, split, manifest and report as an Apache Beam
pipeline (`xmae_jax.data.beam`) for inputs larger than one machine; it writes the same files.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import msgpack
import numpy as np

from xmae_jax import __version__
from xmae_jax import errors
from xmae_jax import locks
from xmae_jax import paths
from xmae_jax import progress as progress_lib
from xmae_jax.data import labels as labels_lib
from xmae_jax.data import preprocess as pp
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards
from xmae_jax.data import sources as sources_lib

WORK = ".work"
REQUEST = "request.json"       # in WORK: what an unfinished run was asked for (see check_request)
REPORT_JSON, REPORT_MD = "report.json", "report.md"
CACHE_VERSION = 2


class PrepareError(errors.XmaeError):
  """An unusable request (unknown source, empty input, output of another schema)."""


# ---------------------------------------------------------------------------------------------
# Subject split
# ---------------------------------------------------------------------------------------------
def split_subjects(subjects: Iterable[str], seed: int, test_frac: float = 0.05,
                   val_frac: float = 0.05) -> dict[str, str]:
  """subject -> 'train' | 'validation' | 'test', deterministic in the seed.

  Same rule as the reference (sklearn train_test_split on the sorted unique subjects, test
  first, then validation from the rest), so with its seed 77 and the same subjects the split is
  the reference's. Fewer than 3 subjects all go to train; otherwise test and validation get at
  least one subject each (ceil) and train keeps at least one.
  """
  for name, f in (("test_frac", test_frac), ("val_frac", val_frac)):
    if not 0 <= f < 1:
      raise PrepareError(f"{name} must be in [0, 1), got {f}")
  subjects = sorted(set(str(s) for s in subjects))
  if len(subjects) < 3:
    return {s: "train" for s in subjects}
  from sklearn.model_selection import train_test_split
  rest, test = (train_test_split(subjects, test_size=test_frac, random_state=seed)
                if test_frac > 0 else (subjects, []))
  train, val = (train_test_split(rest, test_size=val_frac, random_state=seed)
                if val_frac > 0 and len(rest) >= 2 else (rest, []))
  out = {s: "train" for s in train}
  out.update({s: "validation" for s in val})
  out.update({s: "test" for s in test})
  return out


# ---------------------------------------------------------------------------------------------
# One unit of work (module level: spawn-safe for multiprocessing)
# ---------------------------------------------------------------------------------------------
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


def segment_unit(source: str, unit: str, options: dict[str, Any], config: pp.PreprocessConfig,
                 *, modalities: Sequence[str] | None = None) -> Iterator[RecordingSegments]:
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
      item.labels = {**item.labels, **joined}     # the user's file wins over the reader's own
    signals, extra = item.signals, dict(item.extra)
    if modalities is not None:
      if any(m not in signals for m in modalities):
        yield RecordingSegments(item, "lacking")
        continue
      extra.update({m: s for m, s in signals.items() if m not in modalities})
      signals = {m: signals[m] for m in modalities}
    try:
      segs, stats = pp.segment_recording(signals, config, meta=item.meta, labels=item.labels,
                                         events=item.events, series=item.series, extra=extra)
    except pp.PreprocessError as e:
      yield RecordingSegments(item, "unusable", error=str(e))
      continue
    if table is not None:
      stats[f"labels/{'unmatched' if joined is None else 'matched'}"] += 1
    yield RecordingSegments(item, "ok", segs, stats, notes=explain_recording(item, config, stats))


def explain_recording(item: sources_lib.Recording, config: pp.PreprocessConfig,
                      stats: collections.Counter) -> list[str]:
  """Notes on what a recording is where the preprocessing's counts alone would hide it.

  Text cells read as missing are otherwise silent gaps; a required signal that is absent
  shows only as per-window `missing_<m>` drops that name no file; and a recording that is all
  NaN, all text or flat is cut away entirely and counted as `too_short`. That last count is
  renamed here (in `stats`, to `all_nan_<m>`, `all_text_<m>` or `flat_<m>`), so the report
  says what the recording is.
  """
  notes = [f"non-numeric cells: {n} {m} value(s) were text and were read as missing"
           for m, n in sorted(item.non_numeric.items())
           if m in item.signals and n < len(item.signals[m][0])]   # all text: said below
  required = pp.REQUIREMENTS[config.modalities]
  notes += [f"missing channel: no {m} signal (required by --require-modalities {config.modalities})"
            for m in required if m not in item.signals]
  if stats.get("dropped/too_short"):
    found = []
    for m in (required or sorted(item.signals)):
      if m not in item.signals:
        continue
      x = np.asarray(item.signals[m][0], np.float64).ravel()
      finite = x[np.isfinite(x)]
      if not finite.size:
        kind, what = (("all_text", "holds only text") if item.non_numeric.get(m, 0) >= x.size
                      else ("all_nan", "has no finite sample"))
      elif finite.min() == finite.max():
        kind, what = "flat", f"is flat (every sample {finite[0]:g})"
      else:
        continue
      found.append((kind, m))
      notes.append(f"{kind}: {m} {what} ({x.size} samples)")
    if found:        # the recording's one too_short drop, under the name of what it is
      stats["dropped/too_short"] -= 1
      if not stats["dropped/too_short"]:
        del stats["dropped/too_short"]
      stats[f"dropped/{found[0][0]}_{found[0][1]}"] += 1
  return notes


def process_unit(source: str, unit: str, options: dict[str, Any],
                 config: pp.PreprocessConfig) -> dict[str, Any]:
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
        for name in item.labels:                  # the recording's labels, counted per window
          stats[f"label/{name}={seg.labels[name]}"] += 1
        records.append(record_lib.encode(record_lib.Record(
            subject_id=item.subject_id, segment_id=f"{item.name}:{seg.index:05d}", source=source,
            ppg=seg.signals.get("ppg"), ecg=seg.signals.get("ecg"),
            quality_ppg=seg.quality.get("ppg", math.nan),
            quality_ecg=seg.quality.get("ecg", math.nan),
            meta=_finite(seg.meta), labels=seg.labels)))
        subjects.append(str(item.subject_id))
  except sources_lib.SourceError as e:
    status, reason = "skipped", str(e)
    records, subjects = [], []
  except Exception as e:  # a reader bug or a file no reader check anticipated: skip the unit
    status = "skipped"
    reason = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    records, subjects = [], []
  stats["segments_kept"] += len(records)
  return {"unit": unit, "status": status, "reason": reason, "missing": missing,
          "warnings": warnings, "stats": dict(stats), "records": records, "subjects": subjects,
          "seconds": time.perf_counter() - t0}


def _reason_key(message: str) -> str:
  return message.split(":")[0].strip().replace(" ", "_")


def _finite(meta: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in meta.items()
          if not (isinstance(v, float) and not math.isfinite(v))}


def _work_item(args) -> tuple[str, dict[str, Any]]:
  """Pool entry point: process one unit, cache its result atomically, return a small summary."""
  source, unit, options, config_dict, cache_path = args
  config = pp.PreprocessConfig(**config_dict)
  result = process_unit(source, unit, options, config)
  with writing(cache_path):
    errors.atomic_write(Path(cache_path), msgpack.packb(result, use_bin_type=True))
  return unit, {k: v for k, v in result.items() if k != "records"}


def _init_worker():
  # The parent stops the pool on SIGTERM/SIGINT: a Ctrl-C reaches the whole process group, so
  # a worker ignores SIGINT (no KeyboardInterrupt traceback per worker); SIGTERM, which the
  # parent's Pool.terminate sends, ends it silently.
  import signal
  import warnings
  warnings.simplefilter("ignore")
  signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------
RUNNERS = ("local", "beam")


def prepare_dataset(source: str, input: str | os.PathLike | None, output: str | os.PathLike, *,
                    workers: int = 1, seed: int = 0, test_frac: float = 0.05,
                    val_frac: float = 0.05, config: pp.PreprocessConfig | None = None,
                    source_options: dict[str, Any] | None = None,
                    records_per_shard: int = 4096, progress: bool = True,
                    runner: str = "local", beam_options: str | None = None,
                    overwrite: bool = False, log=print) -> dict[str, Any]:
  """Prepares one dataset directory; returns the closing report (also written into it).

  runner "local" runs a multiprocessing pool of `workers` on this machine; "beam" runs the same
  per-input function as an Apache Beam pipeline (`xmae_jax.data.beam`, options from the
  `beam_options` string), for inputs too large for one machine.

  An output that holds a dataset (or an unfinished run) made from other inputs or settings is
  refused unless `overwrite`; a re-run of the same request resumes it. Raises PrepareError
  when no segment at all was kept (the output is left as it was, apart from the cache).
  """
  if runner not in RUNNERS:
    raise PrepareError(f"unknown runner {runner!r} (choose from {', '.join(RUNNERS)})")
  if records_per_shard < 1:
    raise PrepareError(f"--records-per-shard must be >= 1, got {records_per_shard}")
  if runner == "beam":
    from xmae_jax.data import beam   # imports Apache Beam only when asked for
    return beam.prepare_dataset_beam(
        source, input, output, seed=seed, test_frac=test_frac, val_frac=val_frac,
        config=config, source_options=source_options, records_per_shard=records_per_shard,
        beam_options=beam_options, overwrite=overwrite, log=log)
  if beam_options:
    raise PrepareError("--beam-options applies only to --runner beam")
  started = time.time()
  config = config or pp.PreprocessConfig()
  if workers < 1:
    raise PrepareError(f"--workers must be >= 1, got {workers}")
  if paths.is_remote(output):
    return _prepare_remote(output, overwrite, lambda staged: prepare_dataset(
        source, input, staged, workers=workers, seed=seed, test_frac=test_frac,
        val_frac=val_frac, config=config, source_options=source_options,
        records_per_shard=records_per_shard, progress=progress, overwrite=overwrite, log=log))
  out = Path(output)
  units, options = list_units(source, input, seed=seed, test_frac=test_frac,
                              val_frac=val_frac, source_options=source_options,
                              check=lambda: check_output(out, overwrite=overwrite),
                              config=config, output=out)
  request = dataset_request(source, input, options, config, seed=seed, test_frac=test_frac,
                            val_frac=val_frac, records_per_shard=records_per_shard)
  check_request(out, request, overwrite=overwrite)
  with lock_output(out):
    return _prepare_locked(source, input, out, units, options, config, request,
                           workers=workers, seed=seed, test_frac=test_frac, val_frac=val_frac,
                           records_per_shard=records_per_shard, progress=progress, log=log,
                           started=started)


LOCK_FILE = "xmae-prepare.lock"      # in DIR/.work: one run per output at a time


def _prepare_remote(output, overwrite: bool, prepare_into) -> dict[str, Any]:
  """A gs:// output: ArrayRecord writes local files, so the dataset is prepared in a local
  staging folder (`paths.cache_folder`; its cache lets a rerun resume, and its lock guards the
  run) by `prepare_into(folder)`, then uploaded, one object per file, the manifest last: a
  reader never finds a manifest naming shards not uploaded yet. The output is tried before any
  work; a dataset of other settings there is refused unless `overwrite`, before any upload."""
  remote = paths.check_writable(output, "output")
  check_output(remote, overwrite=overwrite)
  staged = paths.cache_folder(output, "staging")
  report = prepare_into(staged)
  manifest = (staged / shards.MANIFEST).read_bytes()
  if not overwrite and (remote / shards.MANIFEST).is_file():
    request = json.loads(manifest).get("request") or {}
    compare_request(paths.text(output), request,
                    manifest=(remote / shards.MANIFEST).read_bytes())
  for f in sorted(staged.iterdir()):
    if f.name not in (WORK, shards.MANIFEST):
      paths.upload(f, remote / f.name)
  paths.upload(staged / shards.MANIFEST, remote / shards.MANIFEST)
  return report


def lock_output(out: Path) -> locks.FolderLock:
  """The output's lock (DIR/.work/xmae-prepare.lock), held for the whole run: a second run on
  the same output, --overwrite or not, is refused with one line naming the holder's process
  and host instead of both rewriting the same cache and shards. Taken after `check_output`
  and `check_request`, so that a refused run writes nothing."""
  with writing(out / WORK / LOCK_FILE):
    return locks.acquire(out / WORK / LOCK_FILE, folder=out, what="output",
                         advice="wait for that xmae-prepare to end, or choose another --output")


def _prepare_locked(source, input, out: Path, units, options, config, request, *, workers,
                    seed, test_frac, val_frac, records_per_shard, progress, log, started):
  key = _params_key(source, options, config)
  work = out / WORK / key
  with writing(work):
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work)
  with writing(out / WORK / REQUEST):
    errors.atomic_write(out / WORK / REQUEST, json.dumps(request, indent=1, sort_keys=True))
  cache = {u: work / (hashlib.sha1(u.encode()).hexdigest()[:20] + ".msgpack") for u in units}
  todo = [u for u in units if not cache[u].is_file()]
  _run_units(source, todo, options, config, cache, workers,
             progress=progress, total=len(units), out=out)

  # Only each unit's summary stays in memory; its records are read back from the cache when
  # the shards are written, so memory does not grow with the dataset.
  results = [_summary(_read_cache(cache[u], u)) for u in units]
  for stale in (out / WORK).iterdir():            # caches of other parameters or code versions
    if stale.is_dir() and stale.name != key:
      shutil.rmtree(stale, ignore_errors=True)
  if not sum(r["stats"].get("segments_kept", 0) for r in results):
    (out / WORK / REQUEST).unlink(missing_ok=True)   # a run that made nothing holds nothing back
    raise PrepareError(nothing_kept(build_report(source, input, results, {}), out))
  unmatched = labels_unmatched(results, options)
  if unmatched:
    raise PrepareError(f"{unmatched}; no dataset written to {out}")
  with writing(out):
    report = _write_dataset(out, source, input, units, results, cache, seed=seed,
                            test_frac=test_frac, val_frac=val_frac, config=config,
                            options=options, records_per_shard=records_per_shard,
                            request=request)
  report["resumed_units"] = len(units) - len(todo)
  write_report(out, report, started, runner="local")
  if log:
    log(summary_line(report))
  return report


def _summary(result: dict[str, Any]) -> dict[str, Any]:
  """A unit's result without its records; its subjects once each."""
  summary = {k: v for k, v in result.items() if k != "records"}
  summary["subjects"] = sorted(set(result["subjects"]))
  return summary


def list_units(source: str, input, *, seed: int, test_frac: float, val_frac: float,
               source_options: dict[str, Any] | None, check,
               config: pp.PreprocessConfig | None = None,
               output=None) -> tuple[list[str], dict]:
  """The checks every runner makes before any work, then the input units and reader options.

  `check()` checks the output location (local or remote); it runs after the arguments and
  before the (possibly long) listing of the input, so a bad request fails fast. A reader that
  can tell its size before listing (the simulator: `planned_size`) has it checked against the
  output's free disk space and this machine's memory first (`check_size`).
  """
  try:
    reader = sources_lib.get(source)
  except sources_lib.SourceError as e:
    raise PrepareError(str(e)) from None
  split_subjects([], seed, test_frac, val_frac)   # rejects bad fractions before any work
  check()
  options = dict(source_options or {})
  if getattr(reader, "USES_SEED", False):
    options["seed"] = int(seed)
  if getattr(reader, "FORMAT", False):
    options["format"] = source                     # one reader for csv and npz
  options.update(labels_lib.options_of(options))   # the file checked now, before any work
  try:
    check_size(reader, input, options, config or pp.PreprocessConfig(), output)
    units = reader.list_inputs(None if input is None else str(input), options)
  except sources_lib.SourceError as e:
    raise PrepareError(str(e) if e.reason == "bad option" else f"{e} (--input {input})") from None
  if not units:
    raise PrepareError(f"empty input: no {source} inputs found under {input}")
  return units, options


# What a run costs per unit of its request, for `check_size` (upper bounds, in bytes).
RECORD_OVERHEAD = 256        # a record's ids, meta and msgpack framing beyond its waveforms
UNIT_MEMORY = 4096           # a unit's name, cache path and summary, held for the whole run
WINDOW_MEMORY = 256          # a window's index row, held until its split's index is written
RAW_SAMPLE_MEMORY = 256      # a raw sample while its unit is read and preprocessed (the
                             # simulator's float64 signals, noises and filtered copies)


def check_size(reader, input, options: dict[str, Any], config: pp.PreprocessConfig,
               output=None) -> None:
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
  record = modalities * 2 * config.segment_length + RECORD_OVERHEAD     # float16 waveforms
  disk = 2 * windows * record                                          # the cache and the shards
  where = _existing_parent(output) if output is not None and "://" not in str(output) else None
  if where is not None:
    # what the output already holds (a cache to resume, shards to replace) counts as free
    free = shutil.disk_usage(where).free + _tree_bytes(Path(output))
    if disk > free:
      raise PrepareError(f"{p['what']} would make about {windows:,} windows, about "
                         f"{_bytes(disk)} of shards and cache: more than the {_bytes(free)} "
                         f"{output} can take (free space on its file system and its own files)")
  available = available_memory()
  if available is None:
    return
  held = units * UNIT_MEMORY + windows * WINDOW_MEMORY
  if held > available:
    raise PrepareError(f"{p['what']} would need about {_bytes(held)} of memory for its "
                       f"{units:,} inputs and {windows:,} windows: more than the "
                       f"{_bytes(available)} available")
  raw = math.ceil(seconds * fs) * RAW_SAMPLE_MEMORY
  if raw > available:
    raise PrepareError(f"{p['what']}: one input of {seconds:g} s at {fs:g} Hz would need about "
                       f"{_bytes(raw)} of memory: more than the {_bytes(available)} available")


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


def write_report(out_dir: str | os.PathLike, report: dict[str, Any], started: float, *,
                 runner: str) -> dict[str, Any]:
  """Adds the run's timing to `report` and writes report.json and report.md into `out_dir`."""
  report["runner"] = runner
  report["seconds"] = round(time.time() - started, 3)
  report["segments_per_s"] = round(report["segments_kept"] / max(report["seconds"], 1e-9), 2)
  out = Path(out_dir)
  with writing(out / REPORT_JSON):
    errors.atomic_write(out / REPORT_JSON, json.dumps(report, indent=1, sort_keys=True))
  with writing(out / REPORT_MD):
    errors.atomic_write(out / REPORT_MD, render_report(report))
  return report


class Interrupted(BaseException):
  """SIGTERM or SIGINT during a local run: the units finished so far are cached (a rerun of the
  same command resumes); `signum` gives the exit status 128 + signum. A BaseException, as
  KeyboardInterrupt: no `except Exception` on the way (a unit's reader errors) may take it for
  a bad input and cache it as skipped. The command line reports it as one line."""

  def __init__(self, signum: int, message: str = ""):
    super().__init__(message)
    self.signum = signum


def _raise_interrupted(signum, frame):
  raise Interrupted(signum)


def _run_units(source, todo, options, config, cache, workers, *, progress, total, out=None):
  """Runs `_work_item` over `todo` (a spawn pool of `workers`). A SIGTERM or SIGINT stops the
  pool (this process terminates and joins its workers, so none is left writing to a pipe
  nobody reads) and raises Interrupted saying how many units are done."""
  import signal
  args = [(source, u, options, dataclasses.asdict(config), str(cache[u])) for u in todo]
  bar = progress_lib.bar(total=total, initial=total - len(todo), unit="input",
                         desc=f"xmae-prepare {source}", disable=not progress)
  handled = (signal.SIGTERM, signal.SIGINT)
  previous = {}
  if threading.current_thread() is threading.main_thread():   # handlers: main thread only
    previous = {s: signal.signal(s, _raise_interrupted) for s in handled}
  done = 0
  try:
    if workers == 1 or len(args) <= 1:
      for a in args:
        _work_item(a)
        done += 1
        bar.update(1)
    else:
      ctx = multiprocessing.get_context("spawn")
      pool = ctx.Pool(min(workers, len(args)), initializer=_init_worker)
      try:
        for _ in pool.imap_unordered(_work_item, args, chunksize=1):
          done += 1
          bar.update(1)
        pool.close()
      finally:
        for s in previous:          # a second signal while stopping the workers: ignored
          signal.signal(s, signal.SIG_IGN)
        pool.terminate()
        pool.join()
  except Interrupted as e:
    name = signal.Signals(e.signum).name
    where = f" (cached in {out / WORK})" if out is not None else ""
    raise Interrupted(e.signum, f"interrupted by {name}: {total - len(todo) + done} of {total} "
                      f"inputs done{where}; run the same command again to resume") from None
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    bar.close()


def _write_dataset(out, source, input, units, results, cache, *, seed, test_frac, val_frac,
                   config, options, records_per_shard, request=None) -> dict[str, Any]:
  assignment = split_subjects((s for r in results for s in r["subjects"]), seed, test_frac,
                              val_frac)
  # Every split is written under temporary names first, so a full disk leaves the previous
  # dataset whole. Then the old manifest goes (it would describe shards about to be replaced:
  # until the new one is written the directory is visibly incomplete), then the renames.
  # One pass over the units' caches fills the three splits, one unit in memory at a time.
  remove_stale_temporaries(out)
  stagers = {s: shards.SplitStager(out, s, records_per_shard) for s in shards.SPLITS}
  staged = []
  try:
    for unit, summary in zip(units, results):
      if not summary["stats"].get("segments_kept"):
        continue
      res = _read_cache(cache[unit], unit)
      for b, subject in zip(res["records"], res["subjects"]):
        stagers[assignment[subject]].add(b)
      del res
    for s in shards.SPLITS:
      staged.append(stagers.pop(s).finish())
  except BaseException:
    for part in (*stagers.values(), *staged):
      part.discard()
    raise
  (out / shards.MANIFEST).unlink(missing_ok=True)
  entries = {s: st.commit() for s, st in zip(shards.SPLITS, staged)}
  keep = {n for e in entries.values() for n in e["shards"]}
  for p in out.glob("*.array_record"):
    if p.name not in keep:
      p.unlink()
  write_manifest(out, entries, source=source, input=input, units=units, options=options,
                 config=config, seed=seed, test_frac=test_frac, val_frac=val_frac, request=request)
  return build_report(source, input, results, entries)


def write_manifest(out_dir, entries: dict[str, dict], *, source: str, input, units: list[str],
                   options: dict[str, Any], config: pp.PreprocessConfig, seed: int,
                   test_frac: float, val_frac: float, request: dict | None = None) -> dict:
  """The manifest of a prepared dataset (every runner writes the same one), written last."""
  input_root = None if input is None else Path(input)
  return shards.write_manifest(
      out_dir, entries, sampling_rate=config.target_fs, segment_length=config.segment_length,
      preprocessing=config.as_dict(), sources=[_relative(u, input_root) for u in units],
      extra={"source": source, "source_options": options, "split": {
          "seed": seed, "test_frac": test_frac, "val_frac": val_frac,
          "method": "sklearn train_test_split on sorted subjects: test, then validation"},
          **({"request": request} if request is not None else {})})


def build_report(source, input, results, entries) -> dict[str, Any]:
  root = None if input is None else Path(input)
  dropped: collections.Counter = collections.Counter()
  cut: collections.Counter = collections.Counter()
  cut_seconds: collections.Counter = collections.Counter()
  notes: collections.Counter = collections.Counter()
  skipped_recordings: collections.Counter = collections.Counter()
  derived: dict[str, dict] = {}
  shifts: collections.Counter = collections.Counter()
  labels: dict[str, collections.Counter] = {}
  joined: collections.Counter = collections.Counter()    # recordings a labels file matched
  files_skipped, files_missing, per_file, warnings = [], [], [], []
  kept = 0
  for r in results:
    st = r["stats"]
    kept += st.get("segments_kept", 0)
    for k, v in st.items():
      if k.startswith("dropped/"):
        dropped[k[8:]] += v
      elif k.startswith("cut/"):
        cut[k[4:]] += v
      elif k.startswith("cut_seconds/"):
        cut_seconds[k[12:]] += v
      elif k.startswith("note/"):
        notes[k[5:]] += v
      elif k.startswith("recording_skipped/"):
        skipped_recordings[k[18:]] += v
      elif k.startswith("derived/"):
        derived.setdefault(k[8:], {"windows": 0, "nan": collections.Counter()})["windows"] += v
      elif k.startswith("derived_nan/"):
        name, reason = k[12:].split("/", 1)
        derived.setdefault(name, {"windows": 0, "nan": collections.Counter()})["nan"][reason] += v
      elif k.startswith(("ppg_shift/", "ppg_shift_seconds/")):
        shifts[k] += v
      elif k.startswith("label/"):
        name, value = k[6:].split("=", 1)
        labels.setdefault(name, collections.Counter())[value] += v
      elif k.startswith("labels/"):
        joined[k[7:]] += v
    unit = _relative(r["unit"], root)
    if r["status"] != "ok":
      files_skipped.append({"file": unit, "reason": r["reason"]})
    files_missing.extend({"file": _relative(p, root), "reason": why, "input": unit}
                         for p, why in r["missing"])
    warnings.extend({"recording": name, "warning": note, "input": unit}
                    for name, note in r.get("warnings", []))
    per_file.append({"file": unit, "status": r["status"], "kept": st.get("segments_kept", 0),
                     "dropped": sum(v for k, v in st.items() if k.startswith("dropped/"))})
  return {
      "source": source, "input": None if input is None else str(input),
      "package_version": __version__,
      "files_total": len(results),
      "files_read": sum(r["status"] == "ok" for r in results),
      "files_skipped": files_skipped,
      "files_missing": files_missing,
      "segments_kept": kept,
      "segments_dropped": dict(sorted(dropped.items())),
      "segments_dropped_total": sum(dropped.values()),
      "stretches_cut": {k: {"runs": v, "seconds": round(cut_seconds[k], 3)}
                        for k, v in sorted(cut.items())},
      "recordings_skipped": dict(sorted(skipped_recordings.items())),
      "quality_notes": dict(sorted(notes.items())),
      # per-window meta derived from the signals (hr, sbp_dbp): windows with a value, and the
      # windows left NaN per reason; and the windows per value of each recording label
      "derived_meta": {name: {"windows": d["windows"], "nan": dict(sorted(d["nan"].items())),
                              "nan_total": sum(d["nan"].values())}
                       for name, d in sorted(derived.items())},
      "label_windows": {name: dict(sorted(c.items())) for name, c in sorted(labels.items())},
      # --labels FILE: recordings it matched, and those it did not (they carry no labels of it)
      "labels_joined": ({"recordings_matched": joined["matched"],
                         "recordings_unmatched": joined["unmatched"]} if joined else {}),
      # --ppg-align-seconds: recordings whose PPG delay was measured (mean shift), fell back to
      # --ppg-delay-seconds (too few clean beats), or were kept as recorded (pulses sooner)
      "ppg_alignment": ({"recordings_measured": shifts["ppg_shift/measured"],
                         "recordings_fallback": shifts["ppg_shift/fallback"],
                         "recordings_clipped_to_0": shifts["ppg_shift/clipped"],
                         "mean_shift_s": round(shifts["ppg_shift_seconds/measured"]
                                               / max(1, shifts["ppg_shift/measured"]), 4)}
                        if shifts else {}),
      "input_warnings": warnings,
      "records_per_split": {s: e["records"] for s, e in entries.items()},
      "subjects_per_split": {s: e["subjects"] for s, e in entries.items()},
      "per_file": per_file,
  }


def labels_unmatched(results, options: dict[str, Any]) -> str | None:
  """The one-line error of a labels file that matched none of the recordings read
  (`labels.no_match`); None when it matched one (or none was given)."""
  table = labels_lib.table_of(options)
  if table is None or any(r["stats"].get("labels/matched", 0) for r in results):
    return None
  if table.by == "subject":
    seen = list(dict.fromkeys(s for r in results for s in r.get("subjects", [])))
  else:
    seen = [labels_lib.record_ids("", r["unit"])[-1] for r in results if r["status"] == "ok"]
  return labels_lib.no_match(table, sum(r["stats"].get("labels/unmatched", 0) for r in results),
                             seen)


def summary_line(report: dict[str, Any]) -> str:
  return (f"xmae-prepare: {report['files_read']}/{report['files_total']} inputs read, "
          f"{len(report['files_skipped'])} skipped, {len(report['files_missing'])} missing; "
          f"{report['segments_kept']} segments kept, {report['segments_dropped_total']} dropped"
          f"{' ' + str(report['segments_dropped']) if report['segments_dropped'] else ''}; "
          f"records per split {report['records_per_split']}, "
          f"subjects {report['subjects_per_split']}"
          + (f"; {len(report['input_warnings'])} input warnings (see report.md)"
             if report.get("input_warnings") else ""))


def nothing_kept(report: dict[str, Any], out: Path, first: int = 3) -> str:
  """The one-line error of a run that kept no segment: why, for the first few inputs."""
  why = [f"{f['file']}: {f['reason']}" for f in report["files_skipped"]]
  why += [f"{f['file']}: {f['reason']}" for f in report["files_missing"]]
  why += [f"{w['recording']}: {w['warning']}" for w in report["input_warnings"]
          if not w["warning"].startswith("non-numeric")]
  if report["segments_dropped"]:
    why.append("segments dropped: " + ", ".join(f"{k} {v}" for k, v in
                                                report["segments_dropped"].items()))
  more = f"; and {len(why) - first} more" if len(why) > first else ""
  text = "; ".join(why[:first]) + more
  return " ".join(f"nothing kept from {report['files_total']} input(s) ({len(report['files_skipped'])} "
                  f"skipped), no dataset written to {out}: {text or 'no window found'}".split())


def render_report(r: dict[str, Any]) -> str:
  lines = [f"# xmae-prepare report: {r['source']}", "",
           f"- input: `{r['input']}`", f"- package version: {r['package_version']}",
           f"- inputs: {r['files_total']} total, {r['files_read']} read, "
           f"{len(r['files_skipped'])} skipped, {len(r['files_missing'])} missing files",
           f"- segments kept: {r['segments_kept']}; dropped: {r['segments_dropped_total']}",
           f"- time: {r.get('seconds', 0)} s ({r.get('segments_per_s', 0)} segments/s), "
           f"{r.get('resumed_units', 0)} inputs reused from the cache", "",
           "| split | records | subjects |", "|---|---|---|"]
  lines += [f"| {s} | {r['records_per_split'][s]} | {r['subjects_per_split'][s]} |"
            for s in r["records_per_split"]]
  for title, d in (("Segments dropped per reason", r["segments_dropped"]),
                   ("Recordings skipped per reason", r["recordings_skipped"]),
                   ("Quality could not be computed (stored as 0)", r["quality_notes"])):
    if d:
      lines += ["", f"## {title}", ""] + [f"- {k}: {v}" for k, v in d.items()]
  if r.get("derived_meta"):
    lines += ["", "## Meta derived per window (with a value; NaN per reason)", ""] + [
        f"- {k}: {d['windows']} windows with a value, {d['nan_total']} NaN"
        + (" (" + ", ".join(f"{why} {n}" for why, n in d["nan"].items()) + ")" if d["nan"]
           else "") for k, d in r["derived_meta"].items()]
  if r.get("label_windows"):
    lines += ["", "## Windows per recording label", ""] + [
        f"- {k}: " + ", ".join(f"{value} {n}" for value, n in c.items())
        for k, c in r["label_windows"].items()]
  if r.get("labels_joined"):
    j = r["labels_joined"]
    lines += ["", "## Labels file (--labels)", "",
              f"- recordings matched: {j['recordings_matched']}; without a row in it (no labels "
              f"of it): {j['recordings_unmatched']}"]
  if r.get("ppg_alignment"):
    a = r["ppg_alignment"]
    lines += ["", "## PPG moved earlier per recording (--ppg-align-seconds)", "",
              f"- measured: {a['recordings_measured']} recordings, mean shift {a['mean_shift_s']} s "
              f"({a['recordings_clipped_to_0']} of them kept as recorded: pulses already sooner)",
              f"- too few clean beats, fixed --ppg-delay-seconds used: {a['recordings_fallback']}"]
  if r["stretches_cut"]:
    lines += ["", "## Cut out before windowing (NaN runs, flat lines)", ""] + [
        f"- {k}: {v['runs']} runs, {v['seconds']} s" for k, v in r["stretches_cut"].items()]
  if r["files_skipped"]:
    lines += ["", "## Inputs skipped", ""] + [f"- `{f['file']}`: {f['reason']}"
                                              for f in r["files_skipped"]]
  if r["files_missing"]:
    lines += ["", "## Files missing or unusable", ""] + [
        f"- `{f['file']}` (in `{f['input']}`): {f['reason']}" for f in r["files_missing"]]
  if r.get("input_warnings"):
    lines += ["", "## Input warnings", ""] + [
        f"- `{w['recording']}` (in `{w['input']}`): {w['warning']}"
        for w in r["input_warnings"]]
  return "\n".join(lines) + "\n"


def verify(data_dir: str | os.PathLike, *, log=print) -> list:
  """`xmae-prepare --verify DIR`: logs one verdict line per part (`reader.verify_dataset`);
  raises PrepareError naming the first problem (shard and record) when any part failed."""
  from xmae_jax.data import reader
  verdicts = reader.verify_dataset(data_dir)
  for v in verdicts:
    if log:
      log(v.line())
  failed = [v for v in verdicts if not v.ok]
  if failed:
    total = sum(v.problem_count for v in failed)
    raise PrepareError(f"{data_dir} failed verification ({total} problem(s) in "
                       f"{', '.join(v.part for v in failed)}); first: {failed[0].problems[0]}")
  return verdicts


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def check_output(out: Path, *, overwrite: bool = False) -> None:
  """Refuses an output that is a file, of another schema (unless `overwrite`), or a foreign
  non-empty directory."""
  if out.exists() and not out.is_dir():
    raise PrepareError(f"output {out} exists and is not a directory")
  if not out.is_dir():
    return
  manifest = out / shards.MANIFEST
  if manifest.is_file():
    if not overwrite:
      check_manifest_schema(manifest.read_bytes(), out)
    return
  if (out / WORK).is_dir():
    return                                         # an interrupted run of ours: resume it
  if any(out.iterdir()):
    raise PrepareError(f"output {out} exists, is not empty and is not an xmae dataset "
                       f"directory (no {shards.MANIFEST}); choose another --output")


def check_manifest_schema(manifest: bytes, out) -> None:
  """An existing output is overwritten only when it is a dataset of this schema."""
  try:
    version = json.loads(manifest).get("schema_version")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
    version = "unreadable"
  if version != record_lib.SCHEMA_VERSION:
    raise PrepareError(f"output {out} exists with another schema (manifest schema_version "
                       f"{version!r}, this version writes {record_lib.SCHEMA_VERSION})")


@contextlib.contextmanager
def writing(path):
  """Turns a failed write (full disk, read-only file system) into one line naming the file.

  OSError carries the file only when it was raised opening it (and then maybe a temporary
  name), so `path` stands in; `shards` reports its own writes as ShardWriteError.
  """
  try:
    yield
  except OSError as e:
    name = e.filename
    if not name or ".tmp" in Path(str(name)).name:   # a temporary beside `path`: name the target
      name = path
    raise PrepareError(f"cannot write {name}: {e.strerror or type(e).__name__}") from None
  except shards.ShardWriteError as e:
    raise PrepareError(str(e)) from None


def remove_stale_temporaries(directory: Path) -> None:
  """Deletes what an earlier run killed mid-write left (`errors.atomic_path` temporaries and
  staged shards); a run that ends by an exception removes its own."""
  for p in directory.glob(".*.tmp*"):
    if p.is_file():
      p.unlink(missing_ok=True)


def dataset_request(source: str, input, options: dict[str, Any], config: pp.PreprocessConfig,
                    *, seed: int, test_frac: float, val_frac: float,
                    records_per_shard: int) -> dict[str, Any]:
  """What a dataset is made from: a re-run asking for the same resumes, anything else is
  another dataset (see `check_request`). Worker count and progress are not part of it."""
  request = {"source": source, "input": None if input is None else os.path.abspath(input),
             "source_options": options, "preprocessing": config.as_dict(),
             "split": {"seed": seed, "test_frac": test_frac, "val_frac": val_frac},
             "records_per_shard": records_per_shard}
  return json.loads(json.dumps(request, sort_keys=True, default=str))   # as stored


def check_request(out: Path, request: dict[str, Any], *, overwrite: bool = False) -> None:
  """Refuses to replace a dataset (or an unfinished run) of `out` made from another request.

  The dataset's request is in its manifest (or, for an unfinished run, in .work/request.json);
  `compare_request` decides, so that the Beam runner, reading through its storage, decides alike.
  """
  if overwrite or not out.is_dir():
    return
  manifest, pending = out / shards.MANIFEST, out / WORK / REQUEST
  try:
    if manifest.is_file():
      compare_request(out, request, manifest=manifest.read_bytes())
    elif pending.is_file():
      compare_request(out, request, pending=pending.read_bytes())
  except OSError:
    return                                         # unreadable: the schema check said enough


def compare_request(out, request: dict[str, Any], *, manifest: bytes | None = None,
                    pending: bytes | None = None) -> None:
  """Raises `check_request`'s refusal when the stored request differs from `request`.

  `manifest` is the bytes of an existing dataset's manifest, else `pending` those of an
  unfinished run's .work/request.json. A manifest written before requests were recorded is
  compared on what it has (source, its options, preprocessing, split). Pure: no I/O.
  """
  old = None
  try:
    if manifest is not None:
      m = json.loads(manifest)
      old = m.get("request") or {k: m[k] for k in ("source", "source_options", "preprocessing")
                                 if k in m}
      if "request" not in m and isinstance(m.get("split"), dict):
        old["split"] = {k: m["split"].get(k) for k in ("seed", "test_frac", "val_frac")}
    elif pending is not None:
      old = json.loads(pending)
  except (ValueError, AttributeError):
    old = None                                     # unreadable: the schema check said enough
  if not isinstance(old, dict):
    return
  diffs = []
  order = ("source", "input", "source_options", "preprocessing", "split", "records_per_shard")
  for k in sorted(request, key=lambda k: order.index(k) if k in order else len(order)):
    new = request[k]
    if k not in old or old[k] == new or (k != "input" and diffs and diffs[0].startswith("source ")):
      continue                                     # another source: its options differ anyway
    if isinstance(old[k], dict) and isinstance(new, dict):
      diffs += [f"{k}.{sub} {old[k].get(sub)!r} -> {new.get(sub)!r}"
                for sub in sorted(set(old[k]) | set(new)) if old[k].get(sub) != new.get(sub)]
    else:
      diffs.append(f"{k} {old[k]!r} -> {new!r}")
  if diffs:
    what = "a dataset" if manifest is not None else "an unfinished run"
    raise PrepareError(f"output {out} holds {what} made from other inputs/settings "
                       f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}): give "
                       f"--overwrite to replace it, or choose another --output")


def _params_key(source: str, options: dict[str, Any], config: pp.PreprocessConfig) -> str:
  # the code that produces records is part of the key, so an edited reader never reuses a
  # stale cache
  code = hashlib.sha256()
  for path in (__file__, pp.__file__, record_lib.__file__, sources_lib.get(source).__file__):
    code.update(Path(path).read_bytes())
  blob = json.dumps({"source": source, "options": options, "code": code.hexdigest(),
                     "config": dataclasses.asdict(config), "cache": CACHE_VERSION,
                     "schema": record_lib.SCHEMA_VERSION, "version": __version__},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_cache(path: Path, unit: str) -> dict[str, Any]:
  try:
    return msgpack.unpackb(path.read_bytes(), raw=False)
  except Exception as e:  # a cache file we wrote atomically should not be corrupt; redo it
    raise PrepareError(f"cache file {path} for {unit} is corrupt ({e}); delete it and re-run")


def _relative(unit: str, root: Path | None) -> str:
  if root is None:
    return unit
  try:
    return str(Path(unit).relative_to(root if root.is_dir() else root.parent))
  except ValueError:
    return unit
