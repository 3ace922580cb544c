"""The byte-level shard reader: record positions of one split -> float32 waveform batches.

`ShardReader` reads a batch's waveform bytes straight from the memory-mapped shards
(`mapped.py`, each shard checked once against array_record), else with one ArrayRecord call
per shard, and decodes all its waveforms with one `np.take`. That fast path depends on the byte
layout `record.encode` writes (msgpack map, schema version first, the float16 waveforms last, ppg
before ecg): a change there must be mirrored in `waveform_bytes` here. A record laid out
otherwise still reads, through `record.decode_map`, only slower.

`iter_records` is the one way to walk a dataset directory's records in order (the pipeline's
selection rule, decoded `Record`s): embedding a prepared dataset and the TFDS export use it.

Checking a whole dataset against its index and manifest (`xmae-prepare --verify`) lives in
`dataset_verify`.
"""

from __future__ import annotations

import itertools
import operator
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from array_record.python import array_record_module as arm

from xmae_jax.data import mapped
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

DatasetError = shards.DatasetError


# ----------------------------------------------------------------------------- record selection


def select_records(
    index: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    min_quality: Mapping[str, float | None],
) -> np.ndarray:
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


def waveform_bytes(
    raw: Sequence[bytes], modalities: Sequence[str], length: int, has_ecg: np.ndarray
) -> dict[str, bytes] | None:
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
    self._has_ecg = self.index["has_ecg"].astype(bool)  # where ppg sits in a record
    self._lock = threading.Lock()
    self._readers: list[Any] = [None] * len(paths)
    self.mapped_shards = mapped.MappedShards(
        paths, self.counts, self._has_ecg, self.segment_length, self.read_raw
    )
    for k in range(len(paths)):  # open (and so validate) every shard now, not mid-training
      self._reader(k)

  def _worker_state(self, state: dict) -> None:
    state["_readers"] = [None] * len(self.paths)
    state["index"] = None  # the filter ran in the parent; workers need only `_has_ecg`

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
          reader = arm.ArrayRecordReader(
              path, self.READER_OPTIONS, file_reader_buffer_size=self.READER_BUFFER
          )
          got = reader.num_records()
        except Exception as e:  # Riegeli reports corruption as RuntimeError
          raise DatasetError(f"shard {path} is corrupt ({e})") from None
        if got != expected:  # a damaged footer reads as 0 records
          raise DatasetError(
              f"shard {path} is corrupt or truncated: {got} readable records, "
              f"the manifest says {expected}"
          )
        self._readers[k] = reader
      return self._readers[k]

  def locate(self, position: int) -> str:
    """'shard PATH record i (position p of split S)': where a split-wide position lives."""
    k = int(np.searchsorted(self._ends, position, "right"))
    return (
        f"shard {self.paths[k]} record {int(position - self._starts[k])} (position "
        f"{int(position)} of split {self.split!r})"
    )

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
    for a, b in zip(bounds[:-1], bounds[1:]):  # plain lists: this loop runs per shard
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
      joined = waveform_bytes(raw, modalities, self.segment_length, self._has_ecg[positions])
    if joined is None:  # a record not laid out as record.encode writes it: decode each map
      joined = self._decode_maps(raw, positions, modalities)
    return {
        m: np.take(_F16_TO_F32, np.frombuffer(joined[m], "<u2")).reshape(len(positions), -1)
        for m in modalities
    }

  def _decode_maps(
      self, raw: Sequence[bytes], positions: np.ndarray, modalities: Sequence[str]
  ) -> dict[str, bytes]:
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
    at = (
        ""
        if i is None
        else (f" record {i} (position {int(self._starts[k]) + i} of split " f"{self.split!r})")
    )
    raise DatasetError(
        f"shard {self.paths[k]}{at} is unreadable: {first_clause(error)}; "
        f"check the dataset with xmae-prepare --verify {self.data_dir}"
    ) from None

  def _raise_bad_record(
      self, raw: Sequence[bytes], positions: np.ndarray, modality: str | None = None
  ):
    for b, pos in zip(raw, positions):
      where = self.locate(pos)
      try:
        d = record_lib.decode_map(b)
      except record_lib.RecordError as e:
        raise DatasetError(f"{where} is corrupt: {e}") from None
      if modality is not None:
        n = len(d.get(modality, b"")) // 2
        if n != self.segment_length:
          raise DatasetError(
              f"{where}: {modality} has {n} samples, the manifest says " f"{self.segment_length}"
          )
    raise DatasetError(f"shards {', '.join(self.shard_of(positions))}: undecodable batch")


# ----------------------------------------------------------------------------- whole splits


def open_split(
    data_dir: str,
    split: str,
    modalities: Sequence[str] = (),
    min_quality: Mapping[str, float | None] | None = None,
) -> tuple[ShardReader, np.ndarray]:
  """The split's reader (every shard opened and checked) and the selected record positions."""
  reader = ShardReader(data_dir, split)
  return reader, select_records(reader.index, tuple(modalities), min_quality or {})


def iter_records(
    data_dir: str,
    split: str,
    *,
    modalities: Sequence[str] = (),
    min_quality: Mapping[str, float | None] | None = None,
    chunk: int = 1024,
) -> Iterator[tuple[int, record_lib.Record]]:
  """(record position, decoded `Record`) of one split in index order, after the selection.

  The selection is the pipeline's (`select_records`): records with every one of `modalities`
  whose quality passes `min_quality`; by default every record. Reads `chunk` records per call.
  """
  reader, positions = open_split(data_dir, split, modalities, min_quality)
  for start in range(0, len(positions), chunk):
    part = positions[start : start + chunk]
    for pos, raw in zip(part.tolist(), reader.read_raw(part)):
      try:
        rec = record_lib.decode(raw)
      except record_lib.RecordError as e:
        raise DatasetError(f"{reader.locate(pos)} is corrupt: {e}") from None
      yield pos, rec


def first_clause(e: Exception) -> str:
  """The first line of an error's message (at most 300 characters), for one-line reports."""
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return text[:300]


__all__ = [
    "DatasetError",
    "ShardReader",
    "ShippedToWorkers",
    "first_clause",
    "iter_records",
    "open_split",
    "select_records",
]
