"""The dataset directory: ArrayRecord shards per split, a quality index per split, a manifest.

Layout written by `xmae-prepare` (and by tests that build small datasets):
  DIR/manifest.json                       see `Manifest` below
  DIR/{split}-{i:05d}-of-{n:05d}.array_record   records (xmae_jax.data.record), group_size:1
  DIR/{split}-index.npz                   one row per record, in shard order then record order:
      quality_ppg, quality_ecg  float32   (NaN where the modality is absent)
      has_ppg, has_ecg          bool
      subject                   int32     index into manifest["splits"][split]["subject_ids"]
  DIR/report.json, DIR/report.md          the closing report of xmae-prepare
The index lets the input pipeline apply the quality threshold, the modality requirement and
per-subject sampling without decoding a single record.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from array_record.python import array_record_module as arm

from xmae_jax import __version__
from xmae_jax.data import record as record_lib

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1"   # random access (Grain ArrayRecordDataSource requires it)


class DatasetError(ValueError):
  """A dataset directory that is missing, empty, corrupt or of another schema."""


def shard_name(split: str, i: int, n: int) -> str:
  return f"{split}-{i:05d}-of-{n:05d}.array_record"


def write_split(out_dir: str | os.PathLike, split: str, records: Iterable[bytes | record_lib.Record],
                records_per_shard: int = 4096) -> dict:
  """Writes one split atomically (temp names, then renames); returns its manifest entry.

  Records may be `Record`s or already-encoded bytes. The index is built from the records.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  encoded = [r if isinstance(r, bytes) else record_lib.encode(r) for r in records]
  maps = [record_lib.decode_map(b) for b in encoded]
  subjects = sorted({m["subject_id"] for m in maps})
  sub_idx = {s: i for i, s in enumerate(subjects)}
  n = max(1, -(-len(encoded) // records_per_shard))
  names, counts, tmp_paths = [], [], []
  for i in range(n):
    chunk = encoded[i * records_per_shard:(i + 1) * records_per_shard]
    name = shard_name(split, i, n)
    tmp = out / (name + ".tmp")
    w = arm.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    for b in chunk:
      w.write(b)
    w.close()
    names.append(name)
    counts.append(len(chunk))
    tmp_paths.append(tmp)
  index = {
      "quality_ppg": np.array([m["quality_ppg"] for m in maps], np.float32),
      "quality_ecg": np.array([m["quality_ecg"] for m in maps], np.float32),
      "has_ppg": np.array(["ppg" in m for m in maps], bool),
      "has_ecg": np.array(["ecg" in m for m in maps], bool),
      "subject": np.array([sub_idx[m["subject_id"]] for m in maps], np.int32),
  }
  tmp_index = out / f"{split}-index.tmp.npz"
  np.savez(tmp_index, **index)
  for tmp, name in zip(tmp_paths, names):
    os.replace(tmp, out / name)
  os.replace(tmp_index, out / f"{split}-index.npz")
  return {"shards": names, "records_per_shard": counts, "records": len(encoded),
          "subjects": len(subjects), "subject_ids": subjects}


def write_manifest(out_dir: str | os.PathLike, splits: dict[str, dict], *, sampling_rate: int,
                   segment_length: int, preprocessing: dict, sources: list[str],
                   extra: dict | None = None) -> dict:
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
  path = Path(out_dir) / MANIFEST
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  os.replace(tmp, path)
  return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict:
  d = Path(data_dir)
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
    raise DatasetError(f"{path}: schema version {manifest.get('schema_version')} is not "
                       f"{record_lib.SCHEMA_VERSION}")
  return manifest


def split_paths(data_dir: str | os.PathLike, split: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """The shard files and the index of one split; clear errors for anything missing."""
  manifest = read_manifest(data_dir)
  entry = manifest["splits"].get(split)
  if not entry or entry.get("records", 0) == 0:
    raise DatasetError(f"{data_dir}: split {split!r} is empty")
  paths = [str(Path(data_dir) / n) for n in entry["shards"]]
  for p in paths:
    if not os.path.isfile(p):
      raise DatasetError(f"shard {p} listed in the manifest is missing")
  index_path = Path(data_dir) / f"{split}-index.npz"
  if not index_path.is_file():
    raise DatasetError(f"{index_path} is missing")
  with np.load(index_path) as z:
    index = {k: z[k] for k in z.files}
  if len(index["subject"]) != entry["records"]:
    raise DatasetError(f"{index_path} has {len(index['subject'])} rows, manifest says "
                       f"{entry['records']} records")
  return paths, index
