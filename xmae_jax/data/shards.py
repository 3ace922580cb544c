"""The dataset directory: ArrayRecord shards per split, a quality index per split, a manifest.

Layout written by `xmae-prepare` (and by tests that build small datasets):
  DIR/manifest.json                       see `Manifest` below
  DIR/{split}-{i:05d}-of-{n:05d}.array_record   records (xmae_jax.data.record), group_size:1
  DIR/{split}-index.npz                   one row per record, in shard order then record order:
      quality_ppg, quality_ecg  float32   (NaN where the modality is absent)
      has_ppg, has_ecg          bool
      subject                   int32     index into manifest["splits"][split]["subject_ids"]
      digest                    uint8 (n, 16)  BLAKE2b-128 of each serialized record, checked
                                          by `xmae-prepare --verify` (absent in datasets
                                          prepared before it existed)
  DIR/report.json, DIR/report.md          the closing report of xmae-prepare
The index lets the input pipeline apply the quality threshold, the modality requirement and
per-subject sampling without decoding a single record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from array_record.python import array_record_module as arm

from xmae_jax import atomic
from xmae_jax import errors
from xmae_jax import paths as paths_lib  # `paths` names shard lists here
from xmae_jax.data import record as record_lib
from xmae_jax.version import __version__

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
# group_size:1 for random access (Grain's ArrayRecordDataSource requires it). Uncompressed:
# min-max-normalized float16 waveforms barely compress, and decompression would slow every read.
WRITER_OPTIONS = "group_size:1,uncompressed"
# The index columns (see the module docstring), per modality of the record schema.
INDEX_FIELDS = (
    *(f"{col}_{m}" for col in ("quality", "has") for m in record_lib.MODALITIES),
    "subject",
)
DIGEST = "digest"  # the optional index column of per-record digests
DIGEST_SIZE = 16
INDEX_COLUMNS = (*INDEX_FIELDS, DIGEST)  # every column a split index is written with, in order


class DatasetError(errors.XmaeError):
  """A dataset directory that is missing, empty, corrupt or of another schema."""


class ShardWriteError(errors.XmaeError):
  """A shard that could not be written (full disk, read-only file system); names the file."""


def record_digest(data: bytes) -> bytes:
  """The digest of one serialized record stored in the index (BLAKE2b, 16 bytes)."""
  return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def shard_name(split: str, i: int, n: int) -> str:
  return f"{split}-{i:05d}-of-{n:05d}.array_record"


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    records: Iterable[bytes | record_lib.Record],
    records_per_shard: int = 4096,
) -> dict:
  """Streams one split to disk atomically (temp names, then renames); returns its manifest entry.

  Records may be `Record`s or already-encoded bytes; only the small index rows are kept in
  memory, so a split can be far larger than RAM. Shards get their final `-of-N` names once N
  is known.
  """
  return stage_split(out_dir, split, records, records_per_shard).commit()


@dataclasses.dataclass
class StagedSplit:
  """A split written under temporary names (`stage_split`): `commit` renames it into place,
  `discard` removes it. Staging every split before committing any keeps the previous dataset
  whole when writing fails: committing only renames, which needs no space."""

  out: Path
  split: str
  tmp_paths: list  # the shards', then the index's
  entry: dict

  def commit(self) -> dict:
    """Renames the shards into place, then the index (after its shards); the manifest entry."""
    names = [*self.entry["shards"], f"{self.split}-index.npz"]
    for tmp, name in zip(self.tmp_paths, names):
      try:
        os.replace(tmp, self.out / name)
      except OSError as e:
        raise ShardWriteError(
            f"cannot write {self.out / name}: " f"{e.strerror or type(e).__name__}"
        ) from None
    return self.entry

  def discard(self) -> None:
    for p in self.tmp_paths:
      Path(p).unlink(missing_ok=True)


def stage_split(
    out_dir: str | os.PathLike,
    split: str,
    records: Iterable[bytes | record_lib.Record],
    records_per_shard: int = 4096,
) -> StagedSplit:
  """`write_split` up to the renames: shards under temporary names, index rows in memory.

  A write that fails (full disk, read-only file system) removes what it wrote and raises
  `ShardWriteError` naming the file.
  """
  stager = SplitStager(out_dir, split, records_per_shard)
  try:
    for rec in records:
      stager.add(rec)
  except BaseException:
    stager.discard()
    raise
  return stager.finish()


class SplitStager:
  """`stage_split` one record at a time (`add`, then `finish` -> StagedSplit), so that a writer
  can fill several splits in one pass over its input without holding the records."""

  def __init__(self, out_dir: str | os.PathLike, split: str, records_per_shard: int = 4096):
    self.out, self.split, self.records_per_shard = Path(out_dir), split, records_per_shard
    self.rows: dict[str, list] = {k: [] for k in INDEX_COLUMNS}
    self.sub_idx: dict[str, int] = {}
    self.tmp_paths: list[Path] = []
    self.counts: list[int] = []
    self.writer: arm.ArrayRecordWriter | None = None

  def _failed(self, e: BaseException):
    self.discard()
    where = getattr(e, "filename", None) or (self.tmp_paths[-1] if self.tmp_paths else self.out)
    why = getattr(e, "strerror", None) or str(e).split(";")[0]
    raise ShardWriteError(f"cannot write {where}: {why}") from None

  def _open_shard(self):
    # np.savez appends ".npz" to other names: the index's temporary name keeps that suffix
    self.out.mkdir(parents=True, exist_ok=True)
    if self.writer is not None:
      self.writer.close()
    self.tmp_paths.append(self.out / f".{self.split}-{len(self.tmp_paths):05d}.array_record.tmp")
    self.writer = arm.ArrayRecordWriter(str(self.tmp_paths[-1]), WRITER_OPTIONS)
    self.counts.append(0)

  def add(self, rec: bytes | record_lib.Record) -> None:
    data = rec if isinstance(rec, bytes) else record_lib.encode(rec)
    m = record_lib.decode_map(data)
    try:
      if self.writer is None or self.counts[-1] == self.records_per_shard:
        self._open_shard()
      self.writer.write(data)
    except (OSError, RuntimeError) as e:  # ArrayRecord: RuntimeError("write() failed: ...")
      self._failed(e)
    self.counts[-1] += 1
    rows = self.rows
    rows["quality_ppg"].append(m["quality_ppg"])
    rows["quality_ecg"].append(m["quality_ecg"])
    rows["has_ppg"].append("ppg" in m)
    rows["has_ecg"].append("ecg" in m)
    rows["subject"].append(self.sub_idx.setdefault(m["subject_id"], len(self.sub_idx)))
    rows[DIGEST].append(record_digest(data))

  def discard(self) -> None:
    """Removes what was written (the writer closed first)."""
    if self.writer is not None:
      try:
        self.writer.close()
      except Exception:  # a writer that failed may fail again on close; its file goes anyway
        pass
      self.writer = None
    for p in self.tmp_paths:
      p.unlink(missing_ok=True)

  def finish(self) -> StagedSplit:
    """Closes the last shard and writes the index (temporary names); the StagedSplit."""
    out, split, rows = self.out, self.split, self.rows
    try:
      if self.writer is None:  # an empty split still gets one (empty) shard: a valid layout
        self._open_shard()
      self.writer.close()
      self.writer = None
    except (OSError, RuntimeError) as e:
      self._failed(e)
    tmp_index = out / f".{split}-index.tmp.npz"
    # Subject indices refer to the sorted subject list stored in the manifest.
    subjects = sorted(self.sub_idx)
    rank = {s: i for i, s in enumerate(subjects)}
    remap = np.array([rank[s] for s in self.sub_idx], np.int32)
    index = {
        "quality_ppg": np.array(rows["quality_ppg"], np.float32),
        "quality_ecg": np.array(rows["quality_ecg"], np.float32),
        "has_ppg": np.array(rows["has_ppg"], bool),
        "has_ecg": np.array(rows["has_ecg"], bool),
        "subject": remap[np.array(rows["subject"], np.int64)].astype(np.int32),
        DIGEST: np.frombuffer(b"".join(rows[DIGEST]), np.uint8).reshape(-1, DIGEST_SIZE),
    }
    try:
      np.savez(tmp_index, **index)
    except OSError as e:  # a full disk: np.savez's error names no file
      self.discard()
      tmp_index.unlink(missing_ok=True)
      raise ShardWriteError(
          f"cannot write {out / f'{split}-index.npz'}: " f"{e.strerror or type(e).__name__}"
      ) from None
    # The shards' final names need N, known only now.
    names = [shard_name(split, i, len(self.tmp_paths)) for i in range(len(self.tmp_paths))]
    return StagedSplit(
        out,
        split,
        [*self.tmp_paths, tmp_index],
        {
            "shards": names,
            "records_per_shard": list(self.counts),
            "records": int(sum(self.counts)),
            "subjects": len(subjects),
            "subject_ids": subjects,
        },
    )


def write_manifest(
    out_dir: str | os.PathLike,
    splits: dict[str, dict],
    *,
    sampling_rate: int,
    segment_length: int,
    preprocessing: dict,
    sources: list[str],
    extra: dict | None = None,
) -> dict:
  manifest = {
      "schema_version": record_lib.SCHEMA_VERSION,
      "package_version": __version__,
      "sampling_rate": sampling_rate,
      "segment_length": segment_length,
      "splits": splits,
      "preprocessing": preprocessing,
      "sources": sources,
      **(extra or {}),
  }
  path = paths_lib.path(out_dir) / MANIFEST
  try:
    atomic.atomic_write(path, json.dumps(manifest, indent=1, sort_keys=True))
  except OSError as e:  # a write() error names no file
    raise ShardWriteError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
  return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict:
  d = paths_lib.path(data_dir)
  if not str(data_dir):
    raise DatasetError("no data directory given (set --config.data.dir)")
  if not d.is_dir():
    raise DatasetError(f"data directory {d} does not exist")
  path = d / MANIFEST
  if not path.is_file():
    raise DatasetError(f"{path} is missing: is {d} a directory written by xmae-prepare?")
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path} is not valid JSON ({e})") from None
  if manifest.get("schema_version") != record_lib.SCHEMA_VERSION:
    raise DatasetError(
        f"{path}: schema version {manifest.get('schema_version')} is not "
        f"{record_lib.SCHEMA_VERSION}"
    )
  return manifest


def member_path(data_dir: str | os.PathLike, name) -> Path:
  """DIR/name for a file name read from the manifest (a shard, a split's index); refuses one
  that would lead outside the dataset folder (absolute, `..`, a folder part), so a crafted or
  damaged manifest never makes a reader open files elsewhere."""
  text = str(name) if isinstance(name, str) else ""
  if (
      not text
      or text in (".", "..")
      or "/" in text
      or "\\" in text
      or "\0" in text
      or os.path.isabs(text)
  ):
    raise DatasetError(
        f"{Path(data_dir) / MANIFEST}: file name {name!r} is not a plain name "
        f"inside the dataset folder; refusing to open it"
    )
  return Path(data_dir) / text


def split_paths(data_dir: str | os.PathLike, split: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """The shard files and the index of one split; clear errors for anything missing. The shards
  of a gs:// dataset are local copies (`paths.local_mirror`): ArrayRecord and the
  memory-mapped reader read local files."""
  data_dir = paths_lib.local_mirror(data_dir, "dataset")
  manifest = read_manifest(data_dir)
  entry = manifest["splits"].get(split)
  if not entry or entry.get("records", 0) == 0:
    raise DatasetError(f"{data_dir}: split {split!r} is empty")
  paths = [str(member_path(data_dir, n)) for n in entry["shards"]]
  for p in paths:
    if not os.path.isfile(p):
      raise DatasetError(f"shard {p} listed in the manifest is missing")
  index_path = member_path(data_dir, f"{split}-index.npz")
  if not index_path.is_file():
    raise DatasetError(f"{index_path} is missing")
  try:
    with np.load(index_path, allow_pickle=False) as z:
      index = {k: z[k] for k in INDEX_FIELDS}
  except KeyError as e:
    raise DatasetError(f"{index_path} lacks the column {e}: not written by xmae-prepare?") from None
  except Exception as e:  # zipfile/numpy raise several types for a truncated or corrupt file
    raise DatasetError(
        f"{index_path} is unreadable ({type(e).__name__}: {e}); prepare the " f"dataset again"
    ) from None
  if len(index["subject"]) != entry["records"]:
    raise DatasetError(
        f"{index_path} has {len(index['subject'])} rows, manifest says "
        f"{entry['records']} records"
    )
  return paths, index
