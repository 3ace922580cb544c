"""Waveform bytes straight from memory-mapped ArrayRecord shards: the pipeline's fast batch read.

Why not array_record for every batch: its reader decodes one Riegeli chunk per record (with
`group_size:1` every record is a chunk), checks the chunk's hash and hands Python one `bytes`
object per record; that per-record work, not the bytes, bounds the pipeline. Here a batch's
waveforms are copied out of the shard files with one numpy fancy index per shard and modality.

What makes that safe is that every shard is checked once, completely, before the first byte
is taken from its mapping (`MappedShards._verify`): all its records are read through
array_record (so Riegeli's chunk hashes are checked, and corruption is reported exactly as
the array_record path reports it), the record positions computed from the layout below are
compared byte for byte with what array_record returned, and each record's waveform keys and
lengths are checked where `record.encode` puts them. A shard in any other layout (compressed,
grouped, written by another writer) keeps the array_record path; so does a record whose
waveforms sit elsewhere. The check costs one array_record pass over the shard, once per
process, instead of one per epoch. It relies on shards not changing in place while mapped:
`shards.write_split` only ever replaces a shard by renaming a new file over it, and a mapping
keeps reading the file it mapped.

The layout (Riegeli/records format, as written with `shards.WRITER_OPTIONS`): the file is 64 KiB
blocks, each starting with a 24-byte block header; the bytes between block headers ("logical"
bytes) are a sequence of chunks, each a 40-byte chunk header and its data; an uncompressed
simple chunk of one record holds: compression byte 0, varint(len(varint(size))),
varint(size), the record. Chunks follow each other without gaps in logical bytes (padding is
only ever needed for chunks with more records than bytes), so record positions are a cumulative
sum of record sizes from the first record chunk on.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import struct
import threading
from typing import Any, Callable, Sequence

import msgpack
import numpy as np

from xmae_jax.data import record as record_lib
from xmae_jax.errors import XmaeError

BLOCK = 1 << 16  # Riegeli block size
BLOCK_HEADER = 24  # bytes at the start of every block
USABLE = BLOCK - BLOCK_HEADER
CHUNK_HEADER = 40
_SIMPLE_CHUNK = ord("r")
_NO_RECORD_CHUNKS = (ord("s"), ord("p"), ord("m"))  # signature, padding, metadata
# Every record.encode output is a fixmap (one byte) whose first entry is "v": version.
VERSION_PREFIX = msgpack.packb("v") + msgpack.packb(record_lib.SCHEMA_VERSION)


def waveform_header(modality: str, length: int) -> bytes:
  """The msgpack bytes `record.encode` writes right before a waveform of `length` samples:
  the key and the bin header of its 2*length bytes."""
  nbytes = 2 * length
  return msgpack.packb(modality) + msgpack.packb(bytes(nbytes))[:-nbytes]


def waveform_offsets(
    record_ends: np.ndarray, has_ecg: np.ndarray, modality: str, length: int
) -> np.ndarray:
  """Where each record's `modality` waveform bytes start, counted back from the record's end.

  `record.encode` writes the waveforms last, ppg before ecg: ecg ends the record, and ppg
  ends it unless ecg follows (`has_ecg`, from the index).
  """
  nbytes = 2 * length
  back = np.full(len(record_ends), nbytes, np.int64)
  if modality == "ppg":
    back += has_ecg.astype(np.int64) * (len(waveform_header("ecg", length)) + nbytes)
  return record_ends - back


def physical(logical: np.ndarray | int):
  """File offset of the logical byte `logical` (block headers skipped)."""
  return logical + BLOCK_HEADER * (logical // USABLE + 1)


def _varint_len(x: np.ndarray) -> np.ndarray:
  n = np.ones_like(x)
  for bits in range(7, 64, 7):
    n += x >= (1 << bits)
  return n


def _first_record_chunk(data: Any, size: int) -> int | None:
  """Logical offset of the first record chunk's header (after signature/metadata chunks)."""
  pos = 0  # physical chunk begin
  while pos + CHUNK_HEADER < size:
    first = pos + BLOCK_HEADER if pos % BLOCK == 0 else pos
    logical = first - BLOCK_HEADER * (first // BLOCK + 1)
    if first % BLOCK + CHUNK_HEADER > BLOCK:
      return None  # a header split by a block header this early: not a layout we expect
    (data_size,) = struct.unpack_from("<Q", data, first + 8)
    chunk_type = data[first + 24]
    num_records = int.from_bytes(data[first + 25 : first + 32], "little")
    if chunk_type == _SIMPLE_CHUNK:
      return logical
    if chunk_type not in _NO_RECORD_CHUNKS or num_records:
      return None
    end = physical(logical + CHUNK_HEADER + data_size - 1) + 1  # last byte of the chunk, +1
    pos = end
  return None


class _Mapping:
  """One checked shard's file, mapped, with a window view that gathers waveforms in one index."""

  def __init__(self, file: mmap.mmap, nbytes: int):
    self.file = file
    self.bytes = np.frombuffer(file, np.uint8)
    self.windows = np.lib.stride_tricks.sliding_window_view(self.bytes, nbytes)


class MappedShards:
  """The fast batch read over one split's shards (see the module docstring).

  Args:
    paths / counts: the split's shard files and their record counts (split-wide record
      positions number the shards' records one after the other).
    has_ecg: per split-wide record, whether ecg follows ppg in it (the index column).
    segment_length: L, samples per waveform.
    read_raw: split-wide positions -> their serialized records through array_record (with its
      hash checks and error messages); used by the one checking pass per shard.

  Per record it keeps where the record ends in its shard's logical bytes and, per modality,
  whether the waveform is where `record.encode` puts it (both filled by the check).
  Thread-safe; pickled without its mappings and checks (a worker process maps and checks the
  shards again, on its first read).
  """

  def __init__(
      self,
      paths: Sequence[str],
      counts: np.ndarray,
      has_ecg: np.ndarray,
      segment_length: int,
      read_raw: Callable[[np.ndarray], list[bytes]],
  ):
    self.paths = list(paths)
    self._counts = np.asarray(counts, np.int64)
    self._ends = np.cumsum(self._counts)
    self._starts = self._ends - self._counts
    self._has_ecg = np.asarray(has_ecg, bool)
    self._nbytes = 2 * int(segment_length)
    self._read_raw = read_raw
    self._reset()
    _allow_open_files(3 * len(self.paths) + 256)

  def _reset(self) -> None:
    self._locks = [threading.Lock() for _ in self.paths]  # one check per shard
    self._local = threading.local()  # per-thread scratch buffers
    total = int(self._ends[-1]) if len(self._ends) else 0
    self._mappings: list[_Mapping | bool | None] = [None] * len(self.paths)  # None: unchecked
    self._record_ends = np.zeros(total, np.int64)
    self._fast = {m: np.zeros(total, bool) for m in record_lib.MODALITIES}

  def __getstate__(self):
    state = self.__dict__.copy()
    for name in ("_locks", "_local", "_mappings", "_record_ends", "_fast"):
      del state[name]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reset()

  def _scratch(self, n: int, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    buffers = getattr(self._local, "buffers", None)
    if buffers is None or len(next(iter(buffers.values()))) < n:
      buffers = {m: np.empty((n, self._nbytes), np.uint8) for m in record_lib.MODALITIES}
      self._local.buffers = buffers
    return {m: buffers[m][:n] for m in modalities}

  def _mapping(self, k: int) -> _Mapping | bool:
    mapping = self._mappings[k]
    if mapping is None:
      with self._locks[k]:
        if self._mappings[k] is None:
          self._mappings[k] = self._verify(k)
        mapping = self._mappings[k]
    return mapping

  def _mappings_of(self, shards: list[int]) -> dict[int, _Mapping | bool]:
    """The shards' mappings; shards not checked yet are checked in parallel (array_record
    reads release the GIL), which is what the first batch of a run waits for."""
    unchecked = [k for k in shards if self._mappings[k] is None]
    if len(unchecked) > 1:
      with concurrent.futures.ThreadPoolExecutor(min(len(unchecked), os.cpu_count() or 1)) as ex:
        list(ex.map(self._mapping, unchecked))
    return {k: self._mapping(k) for k in shards}

  def _verify(self, k: int, chunk: int = 4096) -> _Mapping | bool:
    """Maps shard k and checks it against array_record; False keeps it on that path."""
    count, start = int(self._counts[k]), int(self._starts[k])
    if count == 0:
      return False
    try:
      with open(self.paths[k], "rb") as f:
        # The mapping keeps a file descriptor of its own (next to array_record's reader).
        file = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError:  # e.g. out of file descriptors: this shard keeps the array_record path
      return False
    first = _first_record_chunk(file, len(file))
    if first is None:
      return False
    data = np.frombuffer(file, np.uint8)
    starts, ends = np.empty(count, np.int64), np.empty(count, np.int64)
    chunk_start = first
    for a in range(0, count, chunk):
      try:
        raw = self._read_raw(np.arange(start + a, start + min(a + chunk, count)))  # hash-checked
      except XmaeError:
        # A damaged shard keeps the array_record path: its good records still read, and the
        # read of a damaged one names the shard and record.
        return False
      sizes = np.fromiter(map(len, raw), np.int64, len(raw))
      prefix = 1 + _varint_len(_varint_len(sizes)) + _varint_len(sizes)
      chunk_ends = chunk_start + np.cumsum(CHUNK_HEADER + prefix + sizes)
      record_starts = chunk_ends - sizes
      if chunk_ends[-1] > len(file) or not _same_bytes(data, raw, record_starts.tolist()):
        return False
      starts[a : a + len(raw)], ends[a : a + len(raw)] = record_starts, chunk_ends
      chunk_start = int(chunk_ends[-1])
    has_ecg = self._has_ecg[start : start + count]
    for m in record_lib.MODALITIES:
      self._fast[m][start : start + count] = self._in_place(data, starts, ends, has_ecg, m)
    self._record_ends[start : start + count] = ends
    return _Mapping(file, self._nbytes)

  def _in_place(
      self,
      data: np.ndarray,
      starts: np.ndarray,
      ends: np.ndarray,
      has_ecg: np.ndarray,
      modality: str,
  ) -> np.ndarray:
    """Per record: whether it starts with the schema version and has its `modality` waveform
    (key, bin header of 2L bytes) where `record.encode` puts it."""
    length = self._nbytes // 2
    header = np.frombuffer(waveform_header(modality, length), np.uint8)
    begin = waveform_offsets(ends, has_ecg, modality, length) - len(header)
    version = np.frombuffer(VERSION_PREFIX, np.uint8)
    ok = begin > starts + len(version)
    begin = np.where(ok, begin, starts)
    for first, expected in ((begin, header), (starts + 1, version)):
      ok &= np.all(data[physical(first[:, None] + np.arange(len(expected)))] == expected, axis=1)
    return ok

  def checked(self, k: int) -> bool | None:
    """Whether shard k is on the fast path (None: not checked yet)."""
    mapping = self._mappings[k]
    return None if mapping is None else mapping is not False

  def waveform_starts(self, positions: np.ndarray, modality: str) -> np.ndarray:
    """File offsets of the `modality` waveforms of checked records (split-wide positions)."""
    return physical(
        waveform_offsets(
            self._record_ends[positions], self._has_ecg[positions], modality, self._nbytes // 2
        )
    )

  def waveforms(
      self, positions: np.ndarray, modalities: Sequence[str]
  ) -> dict[str, np.ndarray] | None:
    """{modality: uint8 (n, 2L) little-endian float16 bytes}, or None where a record of the
    batch is not on the fast path (the caller reads it through array_record then).

    The arrays are this thread's scratch buffers, valid until its next call: converting them
    is the caller's next step, and reusing them saves faulting in fresh pages every batch.
    """
    n, nbytes = len(positions), self._nbytes
    if n and (positions.min() < 0 or positions.max() >= len(self._record_ends)):
      return None  # the array_record path reports the bad position
    shard = np.searchsorted(self._ends, positions, "right")
    touched = np.unique(shard).tolist()
    mappings = self._mappings_of(touched)
    if not all(mappings.values()) or not all(self._fast[m][positions].all() for m in modalities):
      return None
    at = {m: self.waveform_starts(positions, m) for m in modalities}
    out = self._scratch(n, modalities)
    if len(touched) == 1:
      groups = [(touched[0], slice(None))]
    else:
      order = np.argsort(shard, kind="stable")
      bounds = np.searchsorted(shard[order], touched + [len(self._ends)]).tolist()
      groups = [(k, order[a:b]) for k, a, b in zip(touched, bounds[:-1], bounds[1:])]
    for k, rows in groups:  # one gather per shard and modality
      for m in modalities:
        out[m][rows] = mappings[k].windows[at[m][rows]]
    for m in modalities:  # rows a block header interrupts (a few percent): the two pieces
      split = np.flatnonzero(at[m] % BLOCK + nbytes > BLOCK)
      for row, k, start in zip(split.tolist(), shard[split].tolist(), at[m][split].tolist()):
        cut, data = BLOCK - start % BLOCK, mappings[k].bytes
        out[m][row, :cut] = data[start : start + cut]
        out[m][row, cut:] = data[start + cut + BLOCK_HEADER : start + nbytes + BLOCK_HEADER]
    return out


def _allow_open_files(count: int) -> None:
  """Raises the soft limit on open files towards `count` (within the hard limit): every shard
  holds two descriptors, its array_record reader's and its mapping's."""
  try:
    import resource  # pylint: disable=g-import-not-at-top

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
      new = count if hard == resource.RLIM_INFINITY else min(count, hard)
      resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
  except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: mapping may fall back
    pass


def _same_bytes(data: np.ndarray, raw: Sequence[bytes], starts: list[int]) -> bool:
  """Whether each record of `raw` is the logical bytes at its start in the mapped file."""
  for rec, start in zip(raw, starts):
    begin = int(physical(start))
    end = int(physical(start + len(rec) - 1)) + 1
    if end - begin == len(rec):
      if data[begin:end].tobytes() != rec:
        return False
    else:  # the record is interrupted by a block header
      logical = np.arange(start, start + len(rec))
      if data[physical(logical)].tobytes() != rec:
        return False
  return True
