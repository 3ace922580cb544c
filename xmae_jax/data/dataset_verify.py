"""`verify_dataset` (`xmae-prepare --verify DIR`) reads every record of every split and checks it
against the index (digest, modalities, quality, subject) and the manifest, so a damaged copy is
found before training rather than at the first batch that touches it."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python import array_record_module as arm

from xmae_jax import paths as paths_lib
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards
from xmae_jax.data.dataset_reader import DatasetError
from xmae_jax.data.dataset_reader import ShardReader
from xmae_jax.data.dataset_reader import first_clause


@dataclasses.dataclass
class Verdict:
  """The outcome of verifying one part of a dataset directory ('manifest' or a split)."""

  part: str
  problems: list[str] = dataclasses.field(default_factory=list)
  problem_count: int = 0
  records: int = 0
  shards: int = 0
  digests: bool = False

  MAX_KEPT = 20  # problems listed per part; the rest are only counted

  def add(self, problem: str) -> None:
    self.problem_count += 1
    if len(self.problems) < self.MAX_KEPT:
      self.problems.append(problem)

  @property
  def ok(self) -> bool:
    return not self.problem_count

  def line(self) -> str:
    if not self.ok:
      more = f" (+{self.problem_count - 1} more)" if self.problem_count > 1 else ""
      return f"{self.part}: FAILED: {self.problems[0]}{more}"
    if self.part == "manifest":
      return "manifest: ok"
    how = (
        "every record decodes and matches its digest"
        if self.digests
        else "every record decodes and matches the index; no digests to check (prepared before "
        "xmae-prepare wrote them)"
    )
    return f"{self.part}: ok: {self.records} records in {self.shards} shard(s), {how}"


def verify_dataset(data_dir: str | os.PathLike, *, chunk: int = 1024) -> list[Verdict]:
  """Reads every record of every split and checks the manifest, the index and the records.

  Returns one `Verdict` for the manifest, then one per split listed in it. Problems name the
  file, and for records the shard and the record number within it. Raises DatasetError only
  when there is no readable manifest at all. A gs:// dataset is checked in its local copy.
  """
  data_dir = paths_lib.local_mirror(data_dir, "dataset")
  manifest = shards.read_manifest(data_dir)
  head = Verdict("manifest")
  length = manifest.get("segment_length")
  if not isinstance(length, int) or length <= 0:
    head.add(f"manifest segment_length {length!r} is not a positive integer")
  splits = manifest.get("splits")
  if not isinstance(splits, dict):
    head.add("manifest has no 'splits' map")
    return [head]
  verdicts = [head]
  for split in sorted(
      splits,
      key=lambda s: (
          s not in shards.SPLITS,
          shards.SPLITS.index(s) if s in shards.SPLITS else 0,
          s,
      ),
  ):
    entry = splits[split]
    v = Verdict(split)
    verdicts.append(v)
    if _entry_ok(Path(data_dir), split, entry, v):
      _verify_split(
          Path(data_dir),
          split,
          entry,
          length if isinstance(length, int) and length > 0 else None,
          v,
          chunk,
      )
  return verdicts


def _entry_ok(d: Path, split: str, entry: Any, v: Verdict) -> bool:
  """The manifest entry of one split is self-consistent; its shard files exist."""
  if not isinstance(entry, dict):
    v.add(f"manifest entry of split {split!r} is not a map")
    return False
  names, counts = entry.get("shards"), entry.get("records_per_shard")
  if not (
      isinstance(names, list)
      and isinstance(counts, list)
      and len(names) == len(counts)
      and all(isinstance(c, int) and c >= 0 for c in counts)
  ):
    v.add(f"manifest: split {split!r} needs a list of shards and a record count for each")
    return False
  if entry.get("records") != sum(counts):
    v.add(
        f"manifest: split {split!r} has records {entry.get('records')!r}, its shards "
        f"{sum(counts)}"
    )
  ids = entry.get("subject_ids")
  if not isinstance(ids, list) or entry.get("subjects") != len(ids):
    v.add(
        f"manifest: split {split!r} subjects {entry.get('subjects')!r} does not match its "
        f"subject_ids"
    )
  for n in names:
    try:
      path = shards.member_path(d, n)
    except DatasetError as e:
      v.add(str(e))
      continue
    if not path.is_file():
      v.add(f"shard {path} listed in the manifest is missing")
  v.records, v.shards = sum(counts), len(names)
  return v.ok


def _load_index(d: Path, split: str, n: int, n_subjects: int, v: Verdict) -> dict | None:
  path = shards.member_path(d, f"{split}-index.npz")
  try:
    with np.load(path, allow_pickle=False) as z:
      index = {k: z[k] for k in z.files}
  except Exception as e:  # missing, truncated or not a zip: several types
    v.add(f"{path} is unreadable ({type(e).__name__}: {first_clause(e)})")
    return None
  for k in (*shards.INDEX_FIELDS, shards.DIGEST):
    if k not in index:
      if k != shards.DIGEST:
        v.add(f"{path} lacks the column {k!r}")
      continue
    if len(index[k]) != n:
      v.add(f"{path}: column {k!r} has {len(index[k])} rows, the manifest says {n} records")
  if not v.ok:
    return None
  if shards.DIGEST in index and index[shards.DIGEST].shape != (n, shards.DIGEST_SIZE):
    v.add(
        f"{path}: column 'digest' has shape {index[shards.DIGEST].shape}, not "
        f"({n}, {shards.DIGEST_SIZE})"
    )
  sub = index["subject"]
  if n and (sub.min() < 0 or sub.max() >= n_subjects):
    v.add(f"{path}: subject numbers outside the {n_subjects} subject_ids of the manifest")
  return index if v.ok else None


def _verify_split(
    d: Path, split: str, entry: dict, length: int | None, v: Verdict, chunk: int
) -> None:
  index = _load_index(d, split, v.records, len(entry["subject_ids"]), v)
  if index is None:
    return
  v.digests = shards.DIGEST in index
  start = 0
  for name, count in zip(entry["shards"], entry["records_per_shard"]):
    path = shards.member_path(d, name)  # checked by _entry_ok
    try:
      reader = arm.ArrayRecordReader(str(path), ShardReader.READER_OPTIONS)
      got = reader.num_records()
    except Exception as e:  # Riegeli reports corruption as RuntimeError
      v.add(f"shard {path} cannot be opened ({first_clause(e)})")
      start += count
      continue
    try:
      if got != count:
        v.add(
            f"shard {path} holds {got} readable records, the manifest says {count}"
            + (" (truncated or corrupt)" if got < count else "")
        )
      for a in range(0, min(got, count), chunk):
        local = list(range(a, min(a + chunk, got, count)))
        try:
          raws = reader.read(local)
        except Exception:  # find the records that fail, one by one
          raws = []
          for i in local:
            try:
              raws.extend(reader.read([i]))
            except Exception as e:
              raws.append(e)
        for i, raw in zip(local, raws):
          where = f"shard {path} record {i} (position {start + i} of split {split!r})"
          problem = (
              f"unreadable ({first_clause(raw)})"
              if isinstance(raw, Exception)
              else _record_problem(raw, index, start + i, entry["subject_ids"], length)
          )
          if problem:
            v.add(f"{where}: {problem}")
    finally:
      try:  # a truncated shard's reader reports the damage again when it is closed
        reader.close()
      except Exception as e:  # Riegeli: RuntimeError
        if not any(str(path) in p for p in v.problems):
          v.add(f"shard {path} is corrupt or truncated ({first_clause(e)})")
    start += count


def _record_problem(
    raw: bytes, index: dict, pos: int, subject_ids: list, length: int | None
) -> str | None:
  """What is wrong with one serialized record against its index row; None if nothing."""
  if shards.DIGEST in index and shards.record_digest(raw) != index[shards.DIGEST][pos].tobytes():
    return "digest mismatch (the bytes changed since xmae-prepare wrote them)"
  try:
    rec = record_lib.decode(raw)
  except record_lib.RecordError as e:
    return f"does not decode ({first_clause(e)})"
  for m in record_lib.MODALITIES:
    x = rec.signal(m)
    if bool(index[f"has_{m}"][pos]) != (x is not None):
      return f"{m} {'absent' if x is None else 'present'}, the index says otherwise"
    if x is not None and length is not None and len(x) != length:
      return f"{m} has {len(x)} samples, the manifest says {length}"
    q, iq = float(getattr(rec, f"quality_{m}")), float(index[f"quality_{m}"][pos])
    if not (np.float32(q) == np.float32(iq) or (math.isnan(q) and math.isnan(iq))):
      return f"quality_{m} {q:g}, the index says {iq:g}"
  if rec.subject_id != subject_ids[int(index["subject"][pos])]:
    return (
        f"subject {rec.subject_id!r}, the index says "
        f"{subject_ids[int(index['subject'][pos])]!r}"
    )
  return None


__all__ = ["Verdict", "verify_dataset"]
