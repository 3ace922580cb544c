"""The byte-level shard reader: record positions of one split -> float32 waveform batches.

`ShardReader` reads a batch's waveform bytes straight from the memory-mapped shards
(`mapped.py`, each shard checked once against array_record), else with one ArrayRecord call
per shard, and decodes all its waveforms with one `np.take`. That fast path depends on the byte
layout `record.encode` writes (msgpack map, schema version first, the float16 waveforms last, ppg
before ecg): a change there must be mirrored in `waveform_bytes` here. A record laid out
otherwise still reads, through `record.decode_map`, only slower.

`iter_records` is the one way to walk a dataset directory's records in order (the pipeline's
selection rule, decoded `Record`s): embedding a prepared dataset and the TFDS export use it.

`verify_dataset` (`xmae-prepare --verify DIR`) reads every record of every split and checks it
against the index (digest, modalities, quality, subject) and the manifest, so a damaged copy is
found before training rather than at the first batch that touches it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from array_record.python import array_record_module as arm

from xmae_jax import paths as paths_lib  # `paths` names shard lists here
from xmae_jax.data import mapped
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

DatasetError = shards.DatasetError


# ----------------------------------------------------------------------------- record selection


def select_records(index: Mapping[str, np.ndarray], modalities: Sequence[str],
                   min_quality: Mapping[str, float | None]) -> np.ndarray:
  """Rows of the split index (record positions) that have every modality and pass quality.

  A threshold of None (or <= -1, below any template-match correlation) switches the check off
  for that modality; otherwise a NaN quality fails it. No modalities: every record.
  """
  keep = np.ones(len(index["subject"]), bool)
  for m in modalities:
    keep &= index[f"has_{m}"].astype(bool)
    threshold = min_quality.get(m)
    if threshold is not None and threshold > -1:
      with np.errstate(invalid="ignore"):
        keep &= index[f"quality_{m}"] >= threshold
  return np.flatnonzero(keep).astype(np.int64)


# ----------------------------------------------------------------------------- reading

# float16 bit pattern -> float32 value: one `np.take` converts a batch faster than astype.
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
# The first bytes of every record.encode output: a fixmap whose first entry is "v": version.
_VERSION_PREFIX = mapped.VERSION_PREFIX


def waveform_bytes(raw: Sequence[bytes], modalities: Sequence[str], length: int,
                   has_ecg: np.ndarray) -> dict[str, bytes] | None:
  """Fast path: the float16 bytes of each modality of all records, joined; None if unsure.

  `record.encode` writes the waveforms last, ppg before ecg, each a msgpack bin of 2*length
  bytes, so they are slices at known distances from the end of the record (`has_ecg`, from
  the index, says whether ecg follows ppg). Each slice's key and bin header, and the schema
  version at the start of the record, are checked; a record laid out differently sends the
  batch to the general `record.decode_map` path instead. The loops run inside `map` over
  builtins, which is far cheaper than unpacking every msgpack map.
  """
  nbytes = 2 * length
  version = itertools.repeat(_VERSION_PREFIX)
  if not all(map(bytes.startswith, raw, version, itertools.repeat(1))):
    return None
  ends = np.fromiter(map(len, raw), np.int64, len(raw))
  out = {}
  for m in modalities:
    header = mapped.waveform_header(m, length)
    block = len(header) + nbytes
    back = block * (1 + has_ecg.astype(np.int64)) if m == "ppg" else np.full(len(raw), block)
    starts = ends - back
    if len(raw) and starts.min() <= len(_VERSION_PREFIX):
      return None
    starts = starts.tolist()
    if not all(map(bytes.startswith, raw, itertools.repeat(header), starts)):
      return None
    hdr = len(header)
    data = [s + hdr for s in starts]
    out[m] = b"".join(map(operator.getitem, raw, map(slice, data, [d + nbytes for d in data])))
  return out


class ShippedToWorkers:
  """Pickling for objects Grain ships to worker processes: the lock is re-created there and
  `_worker_state` drops what each worker rebuilds (open readers, caches) from the copy."""

  def _worker_state(self, state: dict) -> None:
    pass

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"]
    self._worker_state(state)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


class ShardReader(ShippedToWorkers):
  """Batch reads + vectorized decode over one split's shards; errors name the shard.

  Reads a batch from the mapped shards (`mapped.MappedShards`) where it can; otherwise, and
  for `read_raw`, with one `ArrayRecordReader.read(positions)` call per shard it touches, one
  shard after the other. This is what `grain.sources.ArrayRecordDataSource.__getitems__`
  does, minus its per-key Python bisect and the thread pool it starts on every call, which
  with realistic shard counts (a 512-batch touching ~300 shards) are a large part of the read cost.
  The readers use the data source's options (no readahead, 32 KiB buffer: random access).

  Picklable: Grain worker processes receive a copy (without the index) and reopen the shards
  lazily.
  """

  READER_OPTIONS = "readahead_buffer_size:0"
  READER_BUFFER = 32768

  def __init__(self, data_dir: str, split: str):
    self.data_dir, self.split = str(data_dir), split
    paths, self.index = shards.split_paths(data_dir, split)
    manifest = shards.read_manifest(data_dir)
    self.paths = paths
    self.segment_length = int(manifest["segment_length"])
    self.counts = np.array(manifest["splits"][split]["records_per_shard"], np.int64)
    self._ends = np.cumsum(self.counts)
    self._starts = self._ends - self.counts
    self._has_ecg = self.index["has_ecg"].astype(bool)   # where ppg sits in a record
    self._lock = threading.Lock()
    self._readers: list[Any] = [None] * len(paths)
    self.mapped_shards = mapped.MappedShards(paths, self.counts, self._has_ecg,
                                              self.segment_length, self.read_raw)
    for k in range(len(paths)):   # open (and so validate) every shard now, not mid-training
      self._reader(k)

  def _worker_state(self, state: dict) -> None:
    state["_readers"] = [None] * len(self.paths)
    state["index"] = None   # the filter ran in the parent; workers need only `_has_ecg`

  def __len__(self) -> int:
    return int(self._ends[-1])

  def _reader(self, k: int):
    reader = self._readers[k]
    if reader is not None:
      return reader
    with self._lock:
      if self._readers[k] is None:
        path, expected = self.paths[k], int(self.counts[k])
        try:
          reader = arm.ArrayRecordReader(path, self.READER_OPTIONS,
                                         file_reader_buffer_size=self.READER_BUFFER)
          got = reader.num_records()
        except Exception as e:  # Riegeli reports corruption as RuntimeError
          raise DatasetError(f"shard {path} is corrupt ({e})") from None
        if got != expected:   # a damaged footer reads as 0 records
          raise DatasetError(f"shard {path} is corrupt or truncated: {got} readable records, "
                             f"the manifest says {expected}")
        self._readers[k] = reader
      return self._readers[k]

  def locate(self, position: int) -> str:
    """'shard PATH record i (position p of split S)': where a split-wide position lives."""
    k = int(np.searchsorted(self._ends, position, "right"))
    return (f"shard {self.paths[k]} record {int(position - self._starts[k])} (position "
            f"{int(position)} of split {self.split!r})")

  def shard_of(self, positions: np.ndarray) -> list[str]:
    return [self.paths[i] for i in np.unique(np.searchsorted(self._ends, positions, "right"))]

  def read_raw(self, positions: np.ndarray) -> list[bytes]:
    """The serialized records at `positions` (split-wide record numbers), in that order."""
    positions = np.asarray(positions, np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
      raise IndexError(f"record positions outside [0, {len(self)})")
    shard = np.searchsorted(self._ends, positions, "right")
    order = np.argsort(shard, kind="stable")
    sorted_shard = shard[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_shard)) + 1).tolist(), len(positions)]
    local = (positions - self._starts[shard])[order].tolist()
    order, sorted_shard = order.tolist(), sorted_shard.tolist()
    out: list[bytes] = [b""] * len(positions)
    for a, b in zip(bounds[:-1], bounds[1:]):   # plain lists: this loop runs per shard
      k = sorted_shard[a]
      try:
        records = self._reader(k).read(local[a:b])
      except DatasetError:
        raise
      except Exception as e:  # Riegeli: "Corrupted Riegeli/records file: ..."
        self._raise_unreadable(k, local[a:b], e)
      for i, rec in zip(order[a:b], records):
        out[i] = rec
    return out

  def read(self, positions: np.ndarray, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Record positions -> {modality: float32 (n, L)}.

    Straight from the mapped shards (`mapped.MappedShards`: each shard checked once against
    array_record first) where every record of the batch allows it, else through array_record.
    """
    positions = np.asarray(positions, np.int64)
    joined = self.mapped_shards.waveforms(positions, modalities)
    if joined is None:
      raw = self.read_raw(positions)
      joined = waveform_bytes(raw, modalities, self.segment_length,
                               self._has_ecg[positions])
    if joined is None:   # a record not laid out as record.encode writes it: decode each map
      joined = self._decode_maps(raw, positions, modalities)
    return {m: np.take(_F16_TO_F32, np.frombuffer(joined[m], "<u2")).reshape(len(positions), -1)
            for m in modalities}

  def _decode_maps(self, raw: Sequence[bytes], positions: np.ndarray,
                   modalities: Sequence[str]) -> dict[str, bytes]:
    try:
      maps = [record_lib.decode_map(b) for b in raw]
    except record_lib.RecordError:
      self._raise_bad_record(raw, positions)
    out = {}
    for m in modalities:
      try:
        out[m] = b"".join([d[m] for d in maps])
      except KeyError:
        self._raise_bad_record(raw, positions, m)
      if len(out[m]) != 2 * self.segment_length * len(maps):
        self._raise_bad_record(raw, positions, m)
    return out

  def _raise_unreadable(self, k: int, local: Sequence[int], error: Exception):
    """A failed batch read -> DatasetError naming the shard and the first unreadable record."""
    reader = self._reader(k)
    for i in sorted(local):
      try:
        reader.read([i])
      except Exception as e:
        error = e
        break
    else:
      i = None
    at = "" if i is None else (f" record {i} (position {int(self._starts[k]) + i} of split "
                               f"{self.split!r})")
    raise DatasetError(f"shard {self.paths[k]}{at} is unreadable: {_first_clause(error)}; "
                       f"check the dataset with xmae-prepare --verify {self.data_dir}") from None

  def _raise_bad_record(self, raw: Sequence[bytes], positions: np.ndarray,
                        modality: str | None = None):
    for b, pos in zip(raw, positions):
      where = self.locate(pos)
      try:
        d = record_lib.decode_map(b)
      except record_lib.RecordError as e:
        raise DatasetError(f"{where} is corrupt: {e}") from None
      if modality is not None:
        n = len(d.get(modality, b"")) // 2
        if n != self.segment_length:
          raise DatasetError(f"{where}: {modality} has {n} samples, the manifest says "
                             f"{self.segment_length}")
    raise DatasetError(f"shards {', '.join(self.shard_of(positions))}: undecodable batch")


# ----------------------------------------------------------------------------- whole splits


def open_split(data_dir: str, split: str, modalities: Sequence[str] = (),
               min_quality: Mapping[str, float | None] | None = None
               ) -> tuple[ShardReader, np.ndarray]:
  """The split's reader (every shard opened and checked) and the selected record positions."""
  reader = ShardReader(data_dir, split)
  return reader, select_records(reader.index, tuple(modalities), min_quality or {})


def iter_records(data_dir: str, split: str, *, modalities: Sequence[str] = (),
                 min_quality: Mapping[str, float | None] | None = None,
                 chunk: int = 1024) -> Iterator[tuple[int, record_lib.Record]]:
  """(record position, decoded `Record`) of one split in index order, after the selection.

  The selection is the pipeline's (`select_records`): records with every one of `modalities`
  whose quality passes `min_quality`; by default every record. Reads `chunk` records per call.
  """
  reader, positions = open_split(data_dir, split, modalities, min_quality)
  for start in range(0, len(positions), chunk):
    part = positions[start:start + chunk]
    for pos, raw in zip(part.tolist(), reader.read_raw(part)):
      try:
        rec = record_lib.decode(raw)
      except record_lib.RecordError as e:
        raise DatasetError(f"{reader.locate(pos)} is corrupt: {e}") from None
      yield pos, rec


def _first_clause(e: Exception) -> str:
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return text[:300]


# ----------------------------------------------------------------------------- verification


@dataclasses.dataclass
class Verdict:
  """The outcome of verifying one part of a dataset directory ('manifest' or a split)."""
  part: str
  problems: list[str] = dataclasses.field(default_factory=list)
  problem_count: int = 0
  records: int = 0
  shards: int = 0
  digests: bool = False

  MAX_KEPT = 20     # problems listed per part; the rest are only counted

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
    how = ("every record decodes and matches its digest" if self.digests else
           "every record decodes and matches the index; no digests to check (prepared before "
           "xmae-prepare wrote them)")
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
  for split in sorted(splits, key=lambda s: (s not in shards.SPLITS, shards.SPLITS.index(s)
                                             if s in shards.SPLITS else 0, s)):
    entry = splits[split]
    v = Verdict(split)
    verdicts.append(v)
    if _entry_ok(Path(data_dir), split, entry, v):
      _verify_split(Path(data_dir), split, entry,
                    length if isinstance(length, int) and length > 0 else None, v, chunk)
  return verdicts


def _entry_ok(d: Path, split: str, entry: Any, v: Verdict) -> bool:
  """The manifest entry of one split is self-consistent; its shard files exist."""
  if not isinstance(entry, dict):
    v.add(f"manifest entry of split {split!r} is not a map")
    return False
  names, counts = entry.get("shards"), entry.get("records_per_shard")
  if not (isinstance(names, list) and isinstance(counts, list) and len(names) == len(counts)
          and all(isinstance(c, int) and c >= 0 for c in counts)):
    v.add(f"manifest: split {split!r} needs a list of shards and a record count for each")
    return False
  if entry.get("records") != sum(counts):
    v.add(f"manifest: split {split!r} has records {entry.get('records')!r}, its shards "
          f"{sum(counts)}")
  ids = entry.get("subject_ids")
  if not isinstance(ids, list) or entry.get("subjects") != len(ids):
    v.add(f"manifest: split {split!r} subjects {entry.get('subjects')!r} does not match its "
          f"subject_ids")
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
    v.add(f"{path} is unreadable ({type(e).__name__}: {_first_clause(e)})")
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
    v.add(f"{path}: column 'digest' has shape {index[shards.DIGEST].shape}, not "
          f"({n}, {shards.DIGEST_SIZE})")
  sub = index["subject"]
  if n and (sub.min() < 0 or sub.max() >= n_subjects):
    v.add(f"{path}: subject numbers outside the {n_subjects} subject_ids of the manifest")
  return index if v.ok else None


def _verify_split(d: Path, split: str, entry: dict, length: int | None, v: Verdict,
                  chunk: int) -> None:
  index = _load_index(d, split, v.records, len(entry["subject_ids"]), v)
  if index is None:
    return
  v.digests = shards.DIGEST in index
  start = 0
  for name, count in zip(entry["shards"], entry["records_per_shard"]):
    path = shards.member_path(d, name)     # checked by _entry_ok
    try:
      reader = arm.ArrayRecordReader(str(path), ShardReader.READER_OPTIONS)
      got = reader.num_records()
    except Exception as e:  # Riegeli reports corruption as RuntimeError
      v.add(f"shard {path} cannot be opened ({_first_clause(e)})")
      start += count
      continue
    try:
      if got != count:
        v.add(f"shard {path} holds {got} readable records, the manifest says {count}"
              + (" (truncated or corrupt)" if got < count else ""))
      for a in range(0, min(got, count), chunk):
        local = list(range(a, min(a + chunk, got, count)))
        try:
          raws = reader.read(local)
        except Exception:   # find the records that fail, one by one
          raws = []
          for i in local:
            try:
              raws.extend(reader.read([i]))
            except Exception as e:
              raws.append(e)
        for i, raw in zip(local, raws):
          where = f"shard {path} record {i} (position {start + i} of split {split!r})"
          problem = (f"unreadable ({_first_clause(raw)})" if isinstance(raw, Exception)
                     else _record_problem(raw, index, start + i, entry["subject_ids"], length))
          if problem:
            v.add(f"{where}: {problem}")
    finally:
      try:   # a truncated shard's reader reports the damage again when it is closed
        reader.close()
      except Exception as e:  # Riegeli: RuntimeError
        if not any(str(path) in p for p in v.problems):
          v.add(f"shard {path} is corrupt or truncated ({_first_clause(e)})")
    start += count


def _record_problem(raw: bytes, index: dict, pos: int, subject_ids: list, length: int | None
                    ) -> str | None:
  """What is wrong with one serialized record against its index row; None if nothing."""
  if shards.DIGEST in index and shards.record_digest(raw) != index[shards.DIGEST][pos].tobytes():
    return "digest mismatch (the bytes changed since xmae-prepare wrote them)"
  try:
    rec = record_lib.decode(raw)
  except record_lib.RecordError as e:
    return f"does not decode ({_first_clause(e)})"
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
    return (f"subject {rec.subject_id!r}, the index says "
            f"{subject_ids[int(index['subject'][pos])]!r}")
  return None


__all__ = ["DatasetError", "ShardReader", "ShippedToWorkers", "Verdict", "iter_records",
           "open_split", "select_records", "verify_dataset"]
