"""`xmae-prepare --runner local`: the preparation on this machine, resumable.

Work is parallel over input units (a spawn pool). Each unit's result (encoded records, drop
counts, missing files) is cached atomically under DIR/.work/<params>/, so an interrupted run
resumes where it stopped and a re-run with the same parameters only rewrites the shards. Every
split is staged under temporary names (`shards.SplitStager`) before the old manifest is removed
and the splits are renamed into place, so a full disk leaves the previous dataset whole; the
manifest is written last. The shards are written from the cache one unit at a time, so memory
holds only summaries and index rows. One run per output at a time (`lock_output`); SIGTERM or
SIGINT stops the workers and ends in one line (`Interrupted`), and the rerun resumes from the
cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import msgpack

from xmae_jax import atomic
from xmae_jax import locks
from xmae_jax import progress as progress_lib
from xmae_jax.data import prepare_report as report_lib
from xmae_jax.data import prepare_rules as rules
from xmae_jax.data import prepare_split
from xmae_jax.data import prepare_storage
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess as pp
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards
from xmae_jax.data import sources as sources_lib
from xmae_jax.version import __version__

CACHE_VERSION = 2


def prepare_local(
    source: str,
    input,
    output,
    *,
    workers: int = 1,
    seed: int = 0,
    test_frac: float = 0.05,
    val_frac: float = 0.05,
    config: pp.PreprocessConfig | None = None,
    source_options: dict[str, Any] | None = None,
    records_per_shard: int = 4096,
    progress: bool = True,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
  """`prepare.prepare_dataset` on this machine: a spawn pool of `workers`; returns the report.

  An output holding a dataset (or an unfinished run) of another request is refused unless
  `overwrite`; a re-run of the same request resumes it. Raises PrepareError when no segment at
  all was kept (the output is left as it was, apart from the cache).
  """
  started = time.time()
  config = config or pp.PreprocessConfig()
  if workers < 1:
    raise rules.PrepareError(f"--workers must be >= 1, got {workers}")
  if "://" in str(output):
    raise rules.PrepareError(f"output {output} is not a local path: use --runner beam for it")
  out = Path(output)
  storage = prepare_storage.LocalStorage()
  units, options = prepare_units.list_units(
      source,
      input,
      seed=seed,
      test_frac=test_frac,
      val_frac=val_frac,
      source_options=source_options,
      check=lambda: rules.check_output(storage, out, overwrite=overwrite),
      config=config,
      output=out,
  )
  request = rules.dataset_request(
      source,
      input,
      options,
      config,
      seed=seed,
      test_frac=test_frac,
      val_frac=val_frac,
      records_per_shard=records_per_shard,
  )
  rules.check_request(storage, out, request, overwrite=overwrite)
  with lock_output(out):
    return _prepare_locked(
        source,
        input,
        out,
        units,
        options,
        config,
        request,
        workers=workers,
        seed=seed,
        test_frac=test_frac,
        val_frac=val_frac,
        records_per_shard=records_per_shard,
        progress=progress,
        log=log,
        started=started,
    )


LOCK_FILE = "xmae-prepare.lock"  # in DIR/.work: one run per output at a time


def lock_output(out: Path) -> locks.FolderLock:
  """The output's lock (DIR/.work/xmae-prepare.lock), held for the whole run: a second run on
  the same output, --overwrite or not, is refused with one line naming the holder's process
  and host instead of both rewriting the same cache and shards. Taken after `check_output`
  and `check_request`, so that a refused run writes nothing."""
  with rules.writing(out / rules.WORK / LOCK_FILE):
    return locks.acquire(
        out / rules.WORK / LOCK_FILE,
        folder=out,
        what="output",
        advice="wait for that xmae-prepare to end, or choose another --output",
    )


def _prepare_locked(
    source,
    input,
    out: Path,
    units,
    options,
    config,
    request,
    *,
    workers,
    seed,
    test_frac,
    val_frac,
    records_per_shard,
    progress,
    log,
    started,
):
  key = params_key(source, options, config)
  work = out / rules.WORK / key
  with rules.writing(work):
    work.mkdir(parents=True, exist_ok=True)
    rules.remove_stale_temporaries(work)
  with rules.writing(out / rules.WORK / rules.REQUEST):
    atomic.atomic_write(
        out / rules.WORK / rules.REQUEST, json.dumps(request, indent=1, sort_keys=True)
    )
  cache = {u: work / (hashlib.sha1(u.encode()).hexdigest()[:20] + ".msgpack") for u in units}
  todo = [u for u in units if not cache[u].is_file()]
  _run_units(
      source, todo, options, config, cache, workers, progress=progress, total=len(units), out=out
  )

  # Only each unit's summary stays in memory; its records are read back from the cache when
  # the shards are written, so memory does not grow with the dataset.
  results = [_summary(read_cache(cache[u], u)) for u in units]
  for stale in (out / rules.WORK).iterdir():  # caches of other parameters or code versions
    if stale.is_dir() and stale.name != key:
      shutil.rmtree(stale, ignore_errors=True)
  if not sum(r["stats"].get("segments_kept", 0) for r in results):
    # a run that made nothing holds nothing back
    (out / rules.WORK / rules.REQUEST).unlink(missing_ok=True)
    raise rules.PrepareError(
        report_lib.nothing_kept(report_lib.build_report(source, input, results, {}), out)
    )
  unmatched = report_lib.labels_unmatched(results, options)
  if unmatched:
    raise rules.PrepareError(f"{unmatched}; no dataset written to {out}")
  with rules.writing(out):
    report = _write_dataset(
        out,
        source,
        input,
        units,
        results,
        cache,
        seed=seed,
        test_frac=test_frac,
        val_frac=val_frac,
        config=config,
        options=options,
        records_per_shard=records_per_shard,
        request=request,
    )
  report["resumed_units"] = len(units) - len(todo)
  report_lib.write_report(out, report, started, runner="local")
  if log:
    log(report_lib.summary_line(report))
  return report


def _summary(result: dict[str, Any]) -> dict[str, Any]:
  """A unit's result without its records; its subjects once each."""
  summary = {k: v for k, v in result.items() if k != "records"}
  summary["subjects"] = sorted(set(result["subjects"]))
  return summary


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
  args = [(source, u, options, dataclasses.asdict(config), str(cache[u])) for u in todo]
  bar = progress_lib.bar(
      total=total,
      initial=total - len(todo),
      unit="input",
      desc=f"xmae-prepare {source}",
      disable=not progress,
  )
  handled = (signal.SIGTERM, signal.SIGINT)
  previous = {}
  if threading.current_thread() is threading.main_thread():  # handlers: main thread only
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
        for s in previous:  # a second signal while stopping the workers: ignored
          signal.signal(s, signal.SIG_IGN)
        pool.terminate()
        pool.join()
  except Interrupted as e:
    name = signal.Signals(e.signum).name
    where = f" (cached in {out / rules.WORK})" if out is not None else ""
    raise Interrupted(
        e.signum,
        f"interrupted by {name}: {total - len(todo) + done} of {total} "
        f"inputs done{where}; run the same command again to resume",
    ) from None
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    bar.close()


def _write_dataset(
    out,
    source,
    input,
    units,
    results,
    cache,
    *,
    seed,
    test_frac,
    val_frac,
    config,
    options,
    records_per_shard,
    request=None,
) -> dict[str, Any]:
  assignment = prepare_split.split_subjects(
      (s for r in results for s in r["subjects"]), seed, test_frac, val_frac
  )
  # Every split is written under temporary names first, so a full disk leaves the previous
  # dataset whole. Then the old manifest goes (it would describe shards about to be replaced:
  # until the new one is written the directory is visibly incomplete), then the renames.
  # One pass over the units' caches fills the three splits, one unit in memory at a time.
  rules.remove_stale_temporaries(out)
  stagers = {s: shards.SplitStager(out, s, records_per_shard) for s in shards.SPLITS}
  staged = []
  try:
    for unit, summary in zip(units, results):
      if not summary["stats"].get("segments_kept"):
        continue
      res = read_cache(cache[unit], unit)
      for b, subject in zip(res["records"], res["subjects"]):
        stagers[assignment[subject]].add(b)
      del res
    for s in shards.SPLITS:
      staged.append(stagers.pop(s).finish())
  except BaseException:
    for stager in stagers.values():
      stager.discard()
    for split in staged:
      split.discard()
    raise
  (out / shards.MANIFEST).unlink(missing_ok=True)
  entries = {s: st.commit() for s, st in zip(shards.SPLITS, staged)}
  keep = {n for e in entries.values() for n in e["shards"]}
  for p in out.glob("*.array_record"):
    if p.name not in keep:
      p.unlink()
  report_lib.write_manifest(
      out,
      entries,
      source=source,
      input=input,
      units=units,
      options=options,
      config=config,
      seed=seed,
      test_frac=test_frac,
      val_frac=val_frac,
      request=request,
  )
  return report_lib.build_report(source, input, results, entries)


def _work_item(args) -> tuple[str, dict[str, Any]]:
  """Pool entry point: process one unit, cache its result atomically, return a small summary."""
  source, unit, options, config_dict, cache_path = args
  config = pp.PreprocessConfig(**config_dict)
  result = prepare_units.process_unit(source, unit, options, config)
  with rules.writing(cache_path):
    atomic.atomic_write(Path(cache_path), msgpack.packb(result, use_bin_type=True))
  return unit, {k: v for k, v in result.items() if k != "records"}


def _init_worker():
  # The parent stops the pool on SIGTERM/SIGINT: a Ctrl-C reaches the whole process group, so
  # a worker ignores SIGINT (no KeyboardInterrupt traceback per worker); SIGTERM, which the
  # parent's Pool.terminate sends, ends it silently.
  warnings.simplefilter("ignore")
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def params_key(source: str, options: dict[str, Any], config: pp.PreprocessConfig) -> str:
  # the code that produces records is part of the key, so an edited reader never reuses a
  # stale cache
  code = hashlib.sha256()
  for path in (
      prepare_units.__file__,
      *pp.code_files(),
      record_lib.__file__,
      sources_lib.get(source).__file__,
  ):
    code.update(Path(path).read_bytes())
  blob = json.dumps(
      {
          "source": source,
          "options": options,
          "code": code.hexdigest(),
          "config": dataclasses.asdict(config),
          "cache": CACHE_VERSION,
          "schema": record_lib.SCHEMA_VERSION,
          "version": __version__,
      },
      sort_keys=True,
      default=str,
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_cache(path: Path, unit: str) -> dict[str, Any]:
  try:
    return msgpack.unpackb(path.read_bytes(), raw=False)
  except Exception as e:  # a cache file we wrote atomically should not be corrupt; redo it
    raise rules.PrepareError(
        f"cache file {path} for {unit} is corrupt ({e}); " f"delete it and re-run"
    )
