"""Readers of raw recordings, one module per format, and the registry `xmae-prepare` uses.

Every reader module provides:
  DESCRIPTION                        one line for --help
  add_arguments(parser)              its own command-line flags (prefixed with its name)
  list_inputs(path, options) -> [str]  the units of work (files, or subjects for synthetic);
                                     raises SourceError when there is nothing to read
  read(unit, options) -> iterator of Recording | Missing
Readers return raw signals at their own rates; all preprocessing is in xmae_jax.data.preprocess.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

import numpy as np

from xmae_jax import errors

READERS = {
    "synthetic": "xmae_jax.data.sources.synthetic",
    "wfdb": "xmae_jax.data.sources.wfdb",
    "pulsedb": "xmae_jax.data.sources.pulsedb",
    "csv": "xmae_jax.data.sources.tabular",
    "npz": "xmae_jax.data.sources.tabular",
    "edf": "xmae_jax.data.sources.edf",
}


class SourceError(errors.XmaeError):
  """Input that a reader cannot use; the message starts with the reason (e.g. 'unreadable')."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class Recording:
  """One continuous stretch of raw signals of one subject.

  signals: modality ('ecg'/'ppg') -> (samples, fs); both start at t = 0.
  events:  name -> (K, 2) [start_s, end_s]; windows overlapping one get label name = 1, else 0.
  series:  name -> (times_s, values); windows get meta name = the mean of values inside them.
  extra:   name -> (samples, fs), raw channels that are not model inputs, from t = 0 like
           `signals`; they never change the windows, each window only gets meta derived from
           them (`preprocess.derive_window_meta`: 'abp' in mmHg -> sbp/dbp, 'ecg' -> hr).
  non_numeric: modality -> number of cells that held text and were read as missing (NaN), so
           the report can say so instead of the values silently becoming gaps.
  """
  subject_id: str
  name: str
  signals: dict[str, tuple[np.ndarray, float]]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  labels: dict[str, Any] = dataclasses.field(default_factory=dict)
  events: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  series: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  non_numeric: dict[str, int] = dataclasses.field(default_factory=dict)
  extra: dict[str, tuple[np.ndarray, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Missing:
  """A file (or part of one) that the input refers to but that cannot be used."""
  path: str
  reason: str


def get(name: str) -> ModuleType:
  if name not in READERS:
    raise SourceError("unknown source", f"{name!r} (choose from {', '.join(sorted(READERS))})")
  return importlib.import_module(READERS[name])
