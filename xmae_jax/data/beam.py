"""`xmae-prepare --runner beam`: the same preparation as an Apache Beam pipeline.

    xmae-prepare --runner beam --source wfdb --input /mnt/raw --output gs://bucket/ds \\
        --beam-options="--runner=DataflowRunner --project=P --region=R \\
                        --temp_location=gs://bucket/tmp --setup_file=./setup.py"

The pipeline does what the local runner (`prepare_local`) does on one machine, with the same
functions, so both runners write the same dataset directory (the same shard files byte for
byte, the same index rows, manifest and report counts):

  units (files, or simulator subjects), spread over the workers
    -> process_unit (read + preprocess; bad input becomes a reason, never an exception)
    -> the subject split (split_subjects over every subject seen) and, per unit and split, the
       position of its first record in the split: records are ordered by (unit, record) as in
       the local runner, so a record's shard is position // records_per_shard
    -> once something is known to be kept: the old manifest removed (until the new one is
       written the directory is visibly incomplete)
    -> one write per (split, shard) group: sorted by position, written locally with
       shards.write_split and moved (or uploaded) into place
    -> one finalizing step: the split indexes (shard order, digests included), stale shards
       removed, the manifest (with the request) written last, then the report.

The output is checked by the rules the local runner uses (`prepare_rules.check_output`,
`check_request`: a dataset or unfinished run of another request is refused unless
`overwrite`), through the storage. A run that keeps no segment writes no shard, index or
manifest: the finalizing step leaves the one-line reason in .work/ and the driver raises it as
a PrepareError.

The whole split must be known before any record can be placed (a subject's split depends on
every subject), so the processed records are held by the runner between the two halves; on
Dataflow that is its shuffle. Unlike the local runner there is no resume cache: Beam retries
failed work itself, and a failed run is simply run again (the output is marked as ours from
the start, so the re-run is allowed to overwrite it).

Outputs go through a `prepare_storage.Storage`: a local or mounted path (files are moved into
place by rename), or any URL Beam's FileSystems know (gs://, s3://), where every file is written
on local disk first and then uploaded, as array_record's own Beam writer does; an object appears
whole or not at all. Inputs must be paths that every worker can read (a shared or mounted file
system).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import shlex
import time
from typing import Any

import numpy as np

from xmae_jax.data import prepare_report as report_lib
from xmae_jax.data import prepare_rules as rules
from xmae_jax.data import prepare_split
from xmae_jax.data import prepare_storage
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess as pp
from xmae_jax.data import shards

INSTALL_HINT = "pip install xmae-jax[beam]"
RUN_MARKER = "beam-run"  # DIR/.work/beam-run while a run is under way
NOTHING_KEPT = "beam-nothing-kept"  # DIR/.work/...: the error of a run that kept nothing


def require_beam():
  """The apache_beam module, or a one-line PrepareError that says how to install it."""
  try:
    # apache_beam is an optional extra: its absence is the one line below.
    import apache_beam
  except ImportError:
    raise rules.PrepareError(
        f"--runner beam needs Apache Beam, which is not installed: " f"{INSTALL_HINT}"
    ) from None
  return apache_beam


# ---------------------------------------------------------------------------------------------
# The steps (module level, so that every runner can pickle them by reference)
# ---------------------------------------------------------------------------------------------
def _process(indexed_unit, source, options, config):
  i, unit = indexed_unit
  return i, prepare_units.process_unit(source, unit, options, config)


def _summary(indexed_result) -> dict[str, Any]:
  """A unit's result without its records: what the split, the offsets and the report need."""
  i, result = indexed_result
  summary = {k: v for k, v in result.items() if k not in ("records", "subjects")}
  summary["index"] = i
  summary["subject_counts"] = dict(collections.Counter(result["subjects"]))
  return summary


def _plan(summaries, *, seed, test_frac, val_frac, records_per_shard) -> dict[str, Any]:
  """The subject split, each unit's first position per split, and the shards per split."""
  summaries = sorted(summaries, key=lambda s: s["index"])
  assignment = prepare_split.split_subjects(
      (s for u in summaries for s in u["subject_counts"]), seed, test_frac, val_frac
  )
  totals = dict.fromkeys(shards.SPLITS, 0)
  offsets = {}
  for u in summaries:
    counts = collections.Counter()
    for subject, n in u["subject_counts"].items():
      counts[assignment[subject]] += n
    offsets[u["index"]] = dict(totals)
    for split, n in counts.items():
      totals[split] += n
  return {
      "assignment": assignment,
      "offsets": offsets,
      "totals": totals,
      "num_shards": {s: max(1, math.ceil(n / records_per_shard)) for s, n in totals.items()},
  }


def _place(indexed_result, plan, *, records_per_shard):
  """Each record -> ((split, shard), (position in split, bytes))."""
  i, result = indexed_result
  seen = collections.Counter()
  for data, subject in zip(result["records"], result["subjects"]):
    split = plan["assignment"][subject]
    pos = plan["offsets"][i][split] + seen[split]
    seen[split] += 1
    yield (split, pos // records_per_shard), (pos, data)


def _kept(plan) -> bool:
  return any(plan["totals"].values())


def _begin(plan, *, out, storage):
  """Before the first shard is written: the old manifest goes, unless nothing is kept (then
  nothing is written and the old dataset stays whole)."""
  if _kept(plan):
    storage.delete(storage.join(out, shards.MANIFEST))
  return plan


def _shard_keys(plan):
  """Every (split, shard) once, so that an empty split still gets its one empty shard; none
  when nothing is kept."""
  if not _kept(plan):
    return
  for split, n in plan["num_shards"].items():
    for k in range(n):
      yield (split, k), None


def _write_shard(keyed, plan, *, out, storage, records_per_shard) -> dict[str, Any]:
  (split, k), values = keyed
  records = sorted(v for v in values if v is not None)
  expected = min(records_per_shard, plan["totals"][split] - k * records_per_shard)
  if len(records) != max(expected, 0):
    raise RuntimeError(f"shard {k} of {split} got {len(records)} records, expected {expected}")
  name = shards.shard_name(split, k, plan["num_shards"][split])
  with storage.staging(out) as tmp:
    entry = shards.write_split(
        tmp, split, (data for _, data in records), records_per_shard=max(1, len(records))
    )
    with np.load(tmp / f"{split}-index.npz", allow_pickle=False) as z:
      index = {f: z[f] for f in shards.INDEX_COLUMNS}
    storage.put(str(tmp / entry["shards"][0]), storage.join(out, name))
  return {
      "split": split,
      "shard": k,
      "name": name,
      "records": len(records),
      "subject_ids": entry["subject_ids"],
      "index": index,
  }


def _merge_index(parts: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[str]]:
  """One split's index from its shards' (in shard order); subjects renumbered split-wide."""
  subjects = sorted({s for p in parts for s in p["subject_ids"]})
  rank = {s: i for i, s in enumerate(subjects)}
  index = {f: np.concatenate([p["index"][f] for p in parts]) for f in shards.INDEX_COLUMNS}
  index["subject"] = np.concatenate(
      [
          np.array([rank[s] for s in p["subject_ids"]], np.int32)[p["index"]["subject"]]
          for p in parts
      ]
  ).astype(np.int32)
  return index, subjects


def _finalize(
    written,
    summaries,
    *,
    out,
    storage,
    source,
    input,
    units,
    options,
    config,
    seed,
    test_frac,
    val_frac,
    request,
    started,
) -> None:
  summaries = sorted(summaries, key=lambda s: s["index"])
  work = storage.join(out, rules.WORK)
  if not any(s["stats"].get("segments_kept", 0) for s in summaries):
    message = report_lib.nothing_kept(report_lib.build_report(source, input, summaries, {}), out)
    storage.write_bytes(storage.join(work, NOTHING_KEPT), message.encode())
    return
  unmatched = report_lib.labels_unmatched(summaries, options)
  if unmatched:  # no manifest: the shards written are not a dataset
    storage.write_bytes(
        storage.join(work, NOTHING_KEPT), f"{unmatched}; no dataset written to {out}".encode()
    )
    return
  by_split = {
      s: sorted((w for w in written if w["split"] == s), key=lambda w: w["shard"])
      for s in shards.SPLITS
  }
  entries = {}
  with storage.staging(out) as tmp:
    for split, parts in by_split.items():
      index, subjects = _merge_index(parts)
      np.savez(tmp / f"{split}-index.npz", **index)
      storage.put(str(tmp / f"{split}-index.npz"), storage.join(out, f"{split}-index.npz"))
      entries[split] = {
          "shards": [p["name"] for p in parts],
          "records_per_shard": [p["records"] for p in parts],
          "records": int(sum(p["records"] for p in parts)),
          "subjects": len(subjects),
          "subject_ids": subjects,
      }
    keep = {p["name"] for parts in by_split.values() for p in parts}
    for name in storage.listdir(out):
      if name.endswith(".array_record") and name not in keep:
        storage.delete(storage.join(out, name))
    report_lib.write_manifest(
        tmp,
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
    storage.put(str(tmp / shards.MANIFEST), storage.join(out, shards.MANIFEST))
    report = report_lib.build_report(source, input, summaries, entries)
    report["resumed_units"] = 0
    report_lib.write_report(tmp, report, started, runner="beam")
    for name in (report_lib.REPORT_JSON, report_lib.REPORT_MD):
      storage.put(str(tmp / name), storage.join(out, name))
  storage.delete(storage.join(work, rules.REQUEST))  # the manifest holds it now
  storage.delete(storage.join(work, RUN_MARKER))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
# Beam options that count workers or threads: Beam takes a negative count and fails deep
# inside the run (the DirectRunner with an IndexError), so they are checked first.
COUNT_OPTIONS = (
    "direct_num_workers",
    "num_workers",
    "max_num_workers",
    "number_of_worker_harness_threads",
    "sdk_worker_parallelism",
    "direct_runner_bundle_repeat",
)


def pipeline_options(beam_options: str | None):
  """The PipelineOptions of the `--beam-options` string, checked before anything runs: a value
  of the wrong type or a negative worker count is one PrepareError naming it."""
  # apache_beam is an optional extra (require_beam says how to install it).
  from apache_beam.options.pipeline_options import PipelineOptions

  try:
    options = PipelineOptions(shlex.split(beam_options or ""))
  except ValueError as e:  # unbalanced quotes
    raise rules.PrepareError(f"--beam-options {beam_options!r}: {e}") from None
  said = io.StringIO()
  try:
    with contextlib.redirect_stderr(said):  # Beam's argparse prints usage, then exits
      values = options.get_all_options()
  except SystemExit:
    lines = said.getvalue().strip().splitlines() or ["not understood"]
    raise rules.PrepareError(
        f"--beam-options {beam_options!r}: " f"{lines[-1].split('error: ', 1)[-1]}"
    ) from None
  for name in COUNT_OPTIONS:
    value = values.get(name)
    if isinstance(value, int) and value < 0:
      raise rules.PrepareError(
          f"--beam-options {beam_options!r}: --{name}={value} " f"must be >= 0"
      )
  return options


def prepare_dataset_beam(
    source: str,
    input,
    output,
    *,
    seed: int = 0,
    test_frac: float = 0.05,
    val_frac: float = 0.05,
    config: pp.PreprocessConfig | None = None,
    source_options: dict[str, Any] | None = None,
    records_per_shard: int = 4096,
    beam_options: str | None = None,
    storage: prepare_storage.Storage | None = None,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
  """`prepare.prepare_dataset` as a Beam pipeline; returns the report it wrote.

  `beam_options` is a command-line string of Beam pipeline options (`--runner=...`, ...);
  without one the pipeline runs in this process on Beam's DirectRunner. `storage` replaces
  the file system chosen from `output` (tests use a fake one). An output holding a dataset
  (or an unfinished run) of another request is refused unless `overwrite`; a run that keeps
  no segment raises PrepareError and leaves the output as it was.
  """
  beam = require_beam()
  beam_opts = pipeline_options(beam_options)  # before any work: a bad option fails fast
  started = time.time()
  config = config or pp.PreprocessConfig()
  out = str(output)
  storage = storage or prepare_storage.storage_for(out)
  units, options = prepare_units.list_units(
      source,
      input,
      seed=seed,
      test_frac=test_frac,
      val_frac=val_frac,
      source_options=source_options,
      check=lambda: rules.check_output(storage, out, overwrite=overwrite),
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
  try:
    pipeline = beam.Pipeline(options=beam_opts)
  except ValueError as e:  # an unknown Beam runner, a malformed option
    raise rules.PrepareError(f"--beam-options {beam_options!r}: {str(e).splitlines()[0]}") from None
  # Mark the output as ours (and with what it is asked to become, as the local runner does)
  # before anything else is written.
  existed = storage.exists(out)
  work = storage.join(out, rules.WORK)
  storage.write_bytes(storage.join(work, RUN_MARKER), b"")
  storage.write_bytes(
      storage.join(work, rules.REQUEST), json.dumps(request, indent=1, sort_keys=True).encode()
  )
  storage.delete(storage.join(work, NOTHING_KEPT))
  rps = records_per_shard
  side = beam.pvalue.AsSingleton
  with pipeline as p:
    results = (
        p
        | "Units" >> beam.Create(list(enumerate(units)))
        | "Spread" >> beam.Reshuffle()
        | "Process" >> beam.Map(_process, source, options, config)
    )
    summaries = (
        results | "Summarize" >> beam.Map(_summary) | "AllSummaries" >> beam.combiners.ToList()
    )
    plan = summaries | "Plan" >> beam.Map(
        _plan, seed=seed, test_frac=test_frac, val_frac=val_frac, records_per_shard=rps
    )
    begun = plan | "Begin" >> beam.Map(_begin, out=out, storage=storage)
    placed = results | "Place" >> beam.FlatMap(_place, side(plan), records_per_shard=rps)
    keys = plan | "ShardKeys" >> beam.FlatMap(_shard_keys)
    written = (
        (placed, keys)
        | "Together" >> beam.Flatten()
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard"
        >> beam.Map(_write_shard, side(begun), out=out, storage=storage, records_per_shard=rps)
    )
    _ = (
        written
        | "AllShards" >> beam.combiners.ToList()
        | "Finalize"
        >> beam.Map(
            _finalize,
            side(summaries),
            out=out,
            storage=storage,
            source=source,
            input=input,
            units=units,
            options=options,
            config=config,
            seed=seed,
            test_frac=test_frac,
            val_frac=val_frac,
            request=request,
            started=started,
        )
    )
  nothing = storage.join(work, NOTHING_KEPT)
  if storage.exists(nothing):  # a run that made nothing holds nothing back
    message = storage.read_bytes(nothing).decode()
    for name in (NOTHING_KEPT, rules.REQUEST, RUN_MARKER):
      storage.delete(storage.join(work, name))
    storage.prune(work)
    if not existed:
      storage.prune(out)
    raise rules.PrepareError(message)
  report = json.loads(storage.read_bytes(storage.join(out, report_lib.REPORT_JSON)))
  for key in ("records_per_split", "subjects_per_split"):  # split order, as the local runner
    report[key] = {s: report[key][s] for s in shards.SPLITS}
  if log:
    log(report_lib.summary_line(report))
  return report
