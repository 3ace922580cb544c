"""Embedding files: what `xmae-embed` writes and `xmae-probe`/`xmae-compare` read.

An embeddings file is an `.npz` (read with allow_pickle=False; every array is numeric or
fixed-width unicode) holding, for N segments:
  embeddings     float32 (N, latent)
  subject_ids    str (N,)      the subject of each segment (probe folds group by it)
  segment_ids    str (N,)
  split          str (N,)      the dataset split a segment came from ("" when not from a dataset)
  meta.NAME      (N,)          float metadata (NaN where unknown), or str where not numeric
  label.NAME     (N,)          labels, as meta
  info           str ()        JSON: format version, encoder package, modality, input
This module also turns inputs (a prepared dataset directory, a WFDB record, a CSV or NPZ file)
into segments and embeds them with an exported encoder.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

EMBEDDINGS_FORMAT = 1


class EmbeddingsError(ValueError):
  """An embeddings file or an input that cannot be embedded."""


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray, subject_ids: Iterable[str],
                    segment_ids: Iterable[str], *, meta: Mapping[str, np.ndarray] | None = None,
                    labels: Mapping[str, np.ndarray] | None = None,
                    split: Iterable[str] | None = None, info: Mapping[str, Any] | None = None) -> Path:
  """Writes an embeddings file atomically (temp name, then rename)."""
  embeddings = np.asarray(embeddings, np.float32)
  n = len(embeddings)
  arrays: dict[str, np.ndarray] = {
      "embeddings": embeddings,
      "subject_ids": np.asarray([str(s) for s in subject_ids], dtype=str),
      "segment_ids": np.asarray([str(s) for s in segment_ids], dtype=str),
      "split": np.asarray([str(s) for s in split] if split is not None else [""] * n, dtype=str),
  }
  for prefix, columns in (("meta.", meta or {}), ("label.", labels or {})):
    for name, values in columns.items():
      arrays[prefix + name] = np.asarray(values)
  for key, a in arrays.items():
    if len(a) != n:
      raise EmbeddingsError(f"{key} has {len(a)} rows, embeddings have {n}")
  arrays["info"] = np.asarray(json.dumps({"format": EMBEDDINGS_FORMAT, **(info or {})}))
  path = Path(path)
  if path.suffix != ".npz":
    raise EmbeddingsError(f"output {path} must end in .npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def load_embeddings(path: str | os.PathLike) -> dict[str, Any]:
  """The arrays of an embeddings file plus `info` (a dict); clear errors for bad files."""
  path = Path(path)
  if not path.is_file():
    raise EmbeddingsError(f"embeddings file {path} does not exist")
  if path.stat().st_size == 0:
    raise EmbeddingsError(f"embeddings file {path} is empty")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:   # zipfile/numpy raise several types for a corrupt file
    raise EmbeddingsError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None
  for key in ("embeddings", "subject_ids"):
    if key not in arrays:
      raise EmbeddingsError(f"{path} has no {key!r} array: not written by xmae-embed?")
  info = json.loads(str(arrays.pop("info"))) if "info" in arrays else {}
  if info.get("format", EMBEDDINGS_FORMAT) != EMBEDDINGS_FORMAT:
    raise EmbeddingsError(f"{path}: embeddings format {info.get('format')} is not {EMBEDDINGS_FORMAT}")
  if arrays["embeddings"].ndim != 2:
    raise EmbeddingsError(f"{path}: embeddings must be (N, latent), got {arrays['embeddings'].shape}")
  arrays["info"] = info
  return arrays


def columns_from_dicts(dicts: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Per-segment metadata dicts -> per-field columns: float with NaN, or str if not numeric."""
  names = sorted({k for d in dicts for k in d})
  columns = {}
  for name in names:
    values = [d.get(name) for d in dicts]
    try:
      columns[name] = np.array([math.nan if v is None else float(v) for v in values], np.float64)
    except (TypeError, ValueError):
      columns[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
  return columns
