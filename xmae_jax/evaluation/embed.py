"""Embedding files: what `xmae-embed` writes and `xmae-probe`/`xmae-compare` read.

An embeddings file is an `.npz` (read with allow_pickle=False; every array is numeric or
fixed-width unicode) holding, for N segments:
  embeddings     float32 (N, latent)
  subject_ids    str (N,)      the subject of each segment (probe folds group by it)
  segment_ids    str (N,)
  split          str (N,)      the dataset split a segment came from ("" when not from a dataset)
  meta.NAME      (N,)          float metadata (NaN where unknown), or str where not numeric
  label.NAME     (N,)          labels, as meta
  info           str ()        JSON: format version, encoder package, modality and modalities
                               (the inputs the embeddings were computed from: ["ppg"], ["ecg"]
                               or ["ppg", "ecg"] for M2AE's joint fingerprint), input
This module also turns inputs (a prepared dataset directory, a WFDB record, a CSV or NPZ file)
into segments and embeds them with an exported encoder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xmae_jax import atomic
from xmae_jax import errors
from xmae_jax import paths
from xmae_jax import progress
from xmae_jax.data import dataset_reader
from xmae_jax.data import labels as labels_lib
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess
from xmae_jax.data import shards
from xmae_jax.data import sources

EMBEDDINGS_FORMAT = 1


class EmbeddingsError(errors.XmaeError):
  """An embeddings file or an input that cannot be embedded."""


def save_embeddings(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    subject_ids: Iterable[str],
    segment_ids: Iterable[str],
    *,
    meta: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    split: Iterable[str] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
  """Writes an embeddings file atomically (`atomic.atomic_path`)."""
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
  path = check_output(path)
  try:
    with atomic.atomic_path(path) as tmp:
      np.savez(tmp, **arrays)
  except OSError as e:  # full disk: the temporary is gone, `path` is as it was
    raise EmbeddingsError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
  return path


def check_output(path: str | os.PathLike) -> Path:
  """`path` when an embeddings file can be written there: a .npz name, not a directory, in a
  writable folder; `xmae-embed` checks it before any work."""
  path = paths.path(path)
  if path.suffix != ".npz":
    raise EmbeddingsError(f"output {path} must end in .npz")
  if path.is_dir():
    raise EmbeddingsError(f"output {path} is a directory")
  paths.check_writable(path.parent, "embeddings output folder", create=False)
  return path


def load_embeddings(path: str | os.PathLike) -> dict[str, Any]:
  """The arrays of an embeddings file plus `info` (a dict); clear errors for bad files."""
  path = paths.path(path)
  if not path.is_file():
    raise EmbeddingsError(f"embeddings file {path} does not exist")
  if paths.size(path) == 0:
    raise EmbeddingsError(f"embeddings file {path} is empty")
  try:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile/numpy raise several types for a corrupt file
    raise EmbeddingsError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None
  for key in ("embeddings", "subject_ids"):
    if key not in arrays:
      raise EmbeddingsError(f"{path} has no {key!r} array: not written by xmae-embed?")
  info = json.loads(str(arrays.pop("info"))) if "info" in arrays else {}
  if info.get("format", EMBEDDINGS_FORMAT) != EMBEDDINGS_FORMAT:
    raise EmbeddingsError(
        f"{path}: embeddings format {info.get('format')} is not {EMBEDDINGS_FORMAT}"
    )
  if arrays["embeddings"].ndim != 2:
    raise EmbeddingsError(
        f"{path}: embeddings must be (N, latent), got {arrays['embeddings'].shape}"
    )
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


# ----------------------------------------------------------------------------------------------
# Inputs -> segments


@dataclasses.dataclass
class Segments:
  """Contract-shaped, normalized windows and what is known about each (one row per window)."""

  signals: dict[str, np.ndarray]  # modality -> (N, segment_length) float32
  subject_ids: list[str]
  segment_ids: list[str]
  split: list[str]
  meta: list[dict[str, Any]]
  labels: list[dict[str, Any]]
  notes: dict[str, int] = dataclasses.field(default_factory=dict)  # skipped/dropped counts

  def __len__(self):
    return len(self.subject_ids)


def _empty_segments() -> Segments:
  return Segments({}, [], [], [], [], [])


def detect_source(path: str | os.PathLike) -> str:
  """'dataset' (a prepared directory), 'wfdb', 'csv', 'npz' or 'edf', from what `path` looks
  like."""
  p = paths.path(path)
  if p.is_dir():
    if (p / "manifest.json").is_file():
      return "dataset"
    if any(p.rglob("*.hea")):
      return "wfdb"
    raise EmbeddingsError(f"input {p} is a directory with neither manifest.json nor WFDB headers")
  suffix = p.suffix.lower()
  if suffix in (".csv", ".npz", ".edf"):
    return suffix[1:]
  if suffix in (".hea", ".dat", ".mat") or Path(str(p) + ".hea").is_file():
    return "wfdb"
  if not p.exists():
    raise EmbeddingsError(f"input {p} does not exist")
  raise EmbeddingsError(
      f"input {p}: cannot tell its format " "(use --source dataset|wfdb|csv|npz|edf)"
  )


def dataset_segments(
    data_dir: str | os.PathLike,
    modalities: str | Sequence[str],
    splits: Sequence[str] | None = None,
    *,
    segment_length: int | None = None,
) -> Segments:
  """Every record of the given splits (all by default) that has all of `modalities`."""
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  manifest = shards.read_manifest(data_dir)
  if segment_length is not None and manifest.get("segment_length") != segment_length:
    raise EmbeddingsError(
        f"{data_dir}: segments of {manifest.get('segment_length')} samples, the "
        f"encoder expects {segment_length}"
    )
  chosen = [
      s for s in (splits or shards.SPLITS) if manifest["splits"].get(s, {}).get("records", 0) > 0
  ]
  if not chosen:
    raise EmbeddingsError(
        f"{data_dir}: no records in split(s) {', '.join(splits or shards.SPLITS)}"
    )
  out = _empty_segments()
  windows: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
  skipped = 0
  bar = progress.bar(
      total=sum(manifest["splits"][s]["records"] for s in chosen),
      desc=f"reading {Path(data_dir).name}",
      unit="record",
  )
  for split in chosen:
    kept = 0
    for _, rec in dataset_reader.iter_records(str(data_dir), split, modalities=modalities):
      bar.update(1)
      for m in modalities:
        windows[m].append(rec.signal(m))
      out.subject_ids.append(rec.subject_id)
      out.segment_ids.append(rec.segment_id)
      out.split.append(split)
      out.meta.append({**rec.meta, "quality_ppg": rec.quality_ppg, "quality_ecg": rec.quality_ecg})
      out.labels.append(dict(rec.labels))
      kept += 1
    skipped += manifest["splits"][split]["records"] - kept
  bar.close()
  if not out.subject_ids:
    raise EmbeddingsError(f"{data_dir}: no record has {' and '.join(modalities)}")
  out.signals = {m: np.stack(w).astype(np.float32) for m, w in windows.items()}
  out.notes = {f"skipped/lacking_{'_'.join(modalities)}": skipped} if skipped else {}
  return out


def recording_segments(
    path: str | os.PathLike,
    source: str,
    modalities: str | Sequence[str],
    *,
    contract,
    options: Mapping[str, Any] | None = None,
    alignment: Mapping[str, Any] | None = None,
) -> Segments:
  """A WFDB record (or folder), CSV, NPZ or EDF file read by xmae-prepare's reader, then the
  same cleaning, windowing and normalization as prepared data; windows need all of `modalities`.
  A labels file in `options` (`labels`, xmae_jax.data.labels) joins its columns to the
  recordings' labels; one that matches none of them is an error naming it.

  `alignment` (`preprocess.ppg_alignment` of the encoder's package) moves the PPG as the
  training data's was: per record (`ppg_align_seconds`, measured on the record's ECG) when the
  ECG is among `modalities`, else by the fixed `ppg_delay_seconds` (`preprocess.ppg_shift`
  decides); `notes["ppg_alignment"]` says which."""
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  asked = dict(alignment or {})
  alignment = dict(asked)
  if "ecg" not in modalities:  # no ECG to measure on: the fixed delay
    alignment.pop("ppg_align_seconds", None)
  source_reader = sources.get(source)
  options = dict(options or {})
  if source in ("csv", "npz"):
    options["format"] = source  # the tabular reader serves both
  options.update(labels_lib.options_of(options))
  p = paths.path(path)
  if p.is_file() and paths.size(p) == 0:
    raise EmbeddingsError(f"input {p} is empty")
  config = preprocess.PreprocessConfig(
      target_fs=int(round(contract.sampling_rate)),
      segment_seconds=contract.segment_seconds,
      ecg_clean_method=contract.ecg_clean_method,
      ppg_clean_method=contract.ppg_clean_method,
      resample_method=contract.resample_method,
      modalities=modalities[0] if len(modalities) == 1 else "both",
      **alignment,
  )
  out = _empty_segments()
  windows: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
  notes: dict[str, int] = {}

  def note(key):
    notes[key] = notes.get(key, 0) + 1

  try:
    units = source_reader.list_inputs(str(path), options)
  except sources.SourceError as e:
    raise EmbeddingsError(f"input {path}: {e}") from None
  for unit in progress.bar(units, desc=f"reading {p.name}", unit="input"):
    try:  # the whole unit first: a unit that fails half-way contributes nothing, as in prepare
      recordings = list(
          prepare_units.segment_unit(source, unit, options, config, modalities=modalities)
      )
    except sources.SourceError as e:
      note(f"unreadable/{e.reason}")
      continue
    for rec in recordings:
      item = rec.item
      if rec.outcome == "missing":
        note(f"missing/{item.reason}")
        continue
      if rec.outcome == "lacking":
        note(f"skipped/lacking_{'_'.join(modalities)}")
        continue
      if rec.outcome == "unusable":
        note(f"unusable/{rec.error}")
        continue
      for k, v in rec.stats.items():
        notes[k] = notes.get(k, 0) + v
      for seg in rec.segments:
        for m in modalities:
          windows[m].append(seg.signals[m])
        out.subject_ids.append(item.subject_id)
        out.segment_ids.append(f"{item.name}/{seg.index:05d}")
        out.split.append("")
        out.meta.append(
            {
                **seg.meta,
                **{f"quality_{m}": seg.quality.get(m, math.nan) for m in modalities},
                "start_s": seg.start_s,
            }
        )
        out.labels.append(dict(seg.labels))
  if not out.subject_ids:
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(notes.items())) or "nothing readable"
    raise EmbeddingsError(
        f"input {path}: no usable {contract.segment_seconds:g}-s "
        f"{'+'.join(modalities)} window ({detail})"
    )
  table = labels_lib.table_of(options)
  if table is not None and not notes.get("labels/matched"):
    seen = (
        out.subject_ids
        if table.by == "subject"
        else [labels_lib.record_ids("", u)[-1] for u in units]
    )
    raise EmbeddingsError(
        labels_lib.no_match(table, notes.get("labels/unmatched", 0), list(dict.fromkeys(seen)))
    )
  out.signals = {m: np.stack(w).astype(np.float32) for m, w in windows.items()}
  out.notes = {**notes, "ppg_alignment": preprocess.alignment_note(asked, modalities)}
  return out


def read_segments(
    path,
    modalities,
    *,
    contract,
    source: str | None = None,
    splits=None,
    options=None,
    alignment: Mapping[str, Any] | None = None,
) -> Segments:
  """Segments of any supported input (see detect_source); `alignment` applies to raw inputs
  (a prepared dataset was aligned when it was prepared)."""
  source = source or detect_source(path)
  if source == "dataset":
    if (options or {}).get("labels"):
      raise EmbeddingsError(
          f"input {path} is a prepared dataset: its labels were joined by "
          "xmae-prepare (give --labels there)"
      )
    return dataset_segments(path, modalities, splits, segment_length=contract.segment_length)
  return recording_segments(
      path, source, modalities, contract=contract, options=options, alignment=alignment
  )


def encoder_alignment(encoder) -> dict[str, Any]:
  """`preprocess.ppg_alignment` of an encoder's package (its info's recorded preprocessing)."""
  info = encoder.info if isinstance(getattr(encoder, "info", None), dict) else {}
  return preprocess.ppg_alignment(info.get("preprocessing"))


def embed_windows(encoder, *, chunk: int | None = None, **windows: np.ndarray) -> np.ndarray:
  """`encoder.embed_prepared(**windows)` in chunks of a few batches, with a progress bar
  (the same batches and numbers: the encoder pads each batch to one shape)."""
  count = len(next(iter(windows.values())))
  chunk = chunk or 16 * int(getattr(encoder, "batch_size", 256))
  if count <= chunk:
    return encoder.embed_prepared(**windows)
  out = []
  with progress.bar(total=count, desc=f"embedding {'+'.join(windows)}", unit="window") as bar:
    for start in range(0, count, chunk):
      out.append(
          encoder.embed_prepared(**{m: w[start : start + chunk] for m, w in windows.items()})
      )
      bar.update(len(out[-1]))
  return np.concatenate(out)


def embed_input(
    encoder,
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    source: str | None = None,
    splits: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Embeds every segment of `path` with `encoder` into the embeddings file `output`, from
  `modalities` (default every modality the encoder takes; segments need all of them)."""
  modalities = encoder.check_modalities(modalities or encoder.modalities)
  check_output(output)
  source = source or detect_source(path)
  segs = read_segments(
      path,
      modalities,
      contract=encoder.contract,
      source=source,
      splits=splits,
      options=options,
      alignment=encoder_alignment(encoder),
  )
  z = embed_windows(encoder, **{m: segs.signals[m] for m in modalities})
  info = {
      "encoder": encoder.info.get("source", {}) if isinstance(encoder.info, dict) else {},
      "model_name": str(encoder.config.model.name),
      "modality": "+".join(modalities),
      "modalities": list(modalities),
      "encoder_modality": encoder.modality,
      "input": paths.text(paths.absolute(path)),
      "source": source,
      "notes": segs.notes,
  }
  save_embeddings(
      output,
      z,
      segs.subject_ids,
      segs.segment_ids,
      meta=columns_from_dicts(segs.meta),
      labels=columns_from_dicts(segs.labels),
      split=segs.split,
      info=info,
  )
  return {
      "output": str(output),
      "segments": len(segs),
      "subjects": len(set(segs.subject_ids)),
      "latent": int(z.shape[1]),
      "modalities": list(modalities),
      "source": source,
      "notes": segs.notes,
  }
