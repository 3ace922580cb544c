"""The record: one synchronized 10-s ECG+PPG segment, serialized with msgpack (never pickle).

On disk a record is a msgpack map:
  v            int     schema version (SCHEMA_VERSION)
  ppg, ecg     bytes   little-endian float16 samples (absent for single-modality data)
  subject_id   str
  segment_id   str     unique within the dataset
  source       str     e.g. "synthetic", "wfdb", "pulsedb", "csv"
  quality_ppg, quality_ecg   float  template-match quality (15th percentile), NaN if absent
  meta         map     optional str -> float|str: age, sex (0 female / 1 male), bmi, height,
                       weight, sbp, dbp, hr, ptt_ms, ... (the metadata that probes can use)
  labels       map     optional str -> float|int|str: any task label (e.g. "pvc": 1)
Waveforms are stored as float16 like the reference's preprocessing output; they are already
min-max normalized to [-1, 1] per segment, so float16 loses nothing that matters.

`encode` writes the version first and the waveforms last (ppg, then ecg): `reader.ShardReader`'s
fast batch decode slices the waveform bytes at those places without unpacking the map, so a
change to the layout here must be mirrored there (it falls back to `decode_map` otherwise).
`MODALITIES` is the one list (and order) of modalities in the package.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np

from xmae_jax import errors

SCHEMA_VERSION = 1
MODALITIES = ("ppg", "ecg")  # the order in which encode writes the waveforms


class RecordError(errors.XmaeError):
  """A record that cannot be decoded or does not follow the schema."""


@dataclasses.dataclass
class Record:
  subject_id: str
  segment_id: str
  source: str
  ppg: np.ndarray | None = None
  ecg: np.ndarray | None = None
  quality_ppg: float = math.nan
  quality_ecg: float = math.nan
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  labels: dict[str, Any] = dataclasses.field(default_factory=dict)

  def signal(self, modality: str) -> np.ndarray | None:
    return getattr(self, modality)


def encode(rec: Record) -> bytes:
  if rec.ppg is None and rec.ecg is None:
    raise RecordError(f"record {rec.segment_id!r} has neither ppg nor ecg")
  out: dict[str, Any] = {
      "v": SCHEMA_VERSION,
      "subject_id": str(rec.subject_id),
      "segment_id": str(rec.segment_id),
      "source": str(rec.source),
      "quality_ppg": float(rec.quality_ppg),
      "quality_ecg": float(rec.quality_ecg),
      "meta": {str(k): _plain(v) for k, v in rec.meta.items()},
      "labels": {str(k): _plain(v) for k, v in rec.labels.items()},
  }
  for m in MODALITIES:
    x = rec.signal(m)
    if x is not None:
      x = np.asarray(x)
      if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise RecordError(f"record {rec.segment_id!r}: {m} must be a finite 1-D array")
      out[m] = x.astype("<f2").tobytes()
  return msgpack.packb(out, use_bin_type=True)


def decode_map(data: bytes) -> dict[str, Any]:
  """bytes -> the raw msgpack map (waveforms still bytes); cheap, used by batch decoders."""
  try:
    d = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several types for corrupt bytes
    raise RecordError(f"corrupt record ({type(e).__name__}: {e})") from None
  if not isinstance(d, dict) or d.get("v") != SCHEMA_VERSION:
    raise RecordError(
        f"record schema version {d.get('v') if isinstance(d, dict) else '?'} "
        f"is not {SCHEMA_VERSION}"
    )
  return d


def decode(data: bytes) -> Record:
  d = decode_map(data)
  sig = {m: (np.frombuffer(d[m], "<f2").astype(np.float32) if m in d else None) for m in MODALITIES}
  return Record(
      subject_id=d["subject_id"],
      segment_id=d["segment_id"],
      source=d["source"],
      quality_ppg=d["quality_ppg"],
      quality_ecg=d["quality_ecg"],
      meta=d.get("meta", {}),
      labels=d.get("labels", {}),
      **sig,
  )


def _plain(v: Any) -> Any:
  if isinstance(v, (np.floating, np.integer, np.bool_)):
    return v.item()
  return v
