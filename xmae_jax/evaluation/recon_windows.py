"""The paired windows a reconstruction report scores: a prepared dataset's split as prepared, or
WFDB records windowed as the model's training data were, PPG shift included.

A model trained on data prepared with `--ppg-align-seconds` / `--ppg-delay-seconds` saw each
recording's PPG moved earlier; raw records read for it are moved the same way (per record,
measured on the record's ECG, which reconstruction always reads), so the report scores the
windows xmae-prepare would have made of them. `notes["ppg_alignment"]` says what was applied:
"none" when the model's data had no shift, "unknown ..." when its dataset's manifest is not
readable (the records are then read as recorded).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from xmae_jax.data import preprocess
from xmae_jax.data import sources
from xmae_jax.evaluation import contract as contract_lib
from xmae_jax.evaluation import embed as embed_lib

# What the report says of a model whose training data's PPG shift cannot be read back.
UNKNOWN_ALIGNMENT = (
    "unknown (the manifest of the model's training dataset is not readable): PPG read as recorded"
)


def model_alignment(config) -> dict[str, Any] | None:
  """The PPG shift the model of `config` was trained with (`preprocess.ppg_alignment` of its
  dataset's recorded preprocessing; {} when none was applied or no dataset is named), None when
  its dataset's manifest is not readable (unknown)."""
  recorded = contract_lib.recorded_preprocessing(config)
  return None if recorded is None else preprocess.ppg_alignment(recorded)


def paired_segments(
    path,
    *,
    contract,
    split: str | None = "test",
    min_quality: float | None = None,
    alignment: Mapping[str, Any] | None = None,
):
  """(ppg, ecg, subjects, notes) windows of a dataset split or of WFDB records, optionally
  quality-filtered (subjects: one id per window); `alignment` (`model_alignment`) moves raw
  records' PPG as the training data's was."""
  source = embed_lib.detect_source(path)
  options = sources.default_options(source) if source != "dataset" else None
  splits = [split] if source == "dataset" and split not in (None, "", "all") else None
  segs = embed_lib.read_segments(
      path,
      ("ppg", "ecg"),
      contract=contract,
      source=source,
      splits=splits,
      options=options,
      alignment=alignment,
  )
  ppg, ecg = segs.signals["ppg"], segs.signals["ecg"]
  keep = np.ones(len(ppg), bool)
  if min_quality is not None:
    q = np.array([[m.get("quality_ppg", np.nan), m.get("quality_ecg", np.nan)] for m in segs.meta])
    keep = np.all(np.nan_to_num(q, nan=-1) >= min_quality, axis=1)
  notes = dict(segs.notes)
  notes["subjects"] = len(set(np.asarray(segs.subject_ids)[keep]))
  notes["windows_before_quality_filter"] = len(ppg)
  return ppg[keep], ecg[keep], np.asarray(segs.subject_ids)[keep], notes


def per_model(path, alignments: Sequence[Mapping[str, Any] | None], **kwargs) -> list[tuple]:
  """`paired_segments(path, **kwargs)` for each model's alignment (`model_alignment`; None:
  unknown, read without a shift and noted as UNKNOWN_ALIGNMENT), read once per distinct shift:
  models trained on alike data share the same windows."""
  read, out = {}, []
  for alignment in alignments:
    shift = dict(alignment or {})
    key = tuple(sorted(shift.items()))
    if key not in read:
      read[key] = paired_segments(path, alignment=shift, **kwargs)
    ppg, ecg, subjects, notes = read[key]
    if alignment is None and "ppg_alignment" in notes:  # raw records (prepared data: as is)
      notes = {**notes, "ppg_alignment": UNKNOWN_ALIGNMENT}
    out.append((ppg, ecg, subjects, notes))
  return out
