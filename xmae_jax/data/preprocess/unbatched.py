"""The per-window path: segment_recording's result computed one window at a time through
clean(), quality() (NeuroKit's own peak detection and rate) and resample().

It is the oracle that tests/data/test_preprocess_equality.py holds segment_recording to on real
records. It stays in the library, not beside that test, because `python -m
xmae_jax.benchmarks prepare` measures it next to segment_recording (its 'ours_unbatched' side,
BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import math
from typing import Mapping

import numpy as np

from xmae_jax.data.preprocess.beats import heart_rate
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import Segment
from xmae_jax.data.preprocess.segment import segment_with
from xmae_jax.data.preprocess.signal_quality import quality
from xmae_jax.data.preprocess.transforms import clean
from xmae_jax.data.preprocess.transforms import resample
from xmae_jax.data.preprocess.windows import check_window


def segment_recording_unbatched(
    signals: Mapping[str, tuple[np.ndarray, float]], config: PreprocessConfig, **options
) -> tuple[list[Segment], collections.Counter]:
  """segment_recording (same arguments and result), one window at a time (WindowSteps)."""
  return segment_with(WindowSteps, signals, config, **options)


class WindowSteps:
  """Each step computed when one_window asks for it, for that window alone."""

  def __init__(self, present, starts, config, required):
    del required  # every step is computed on demand
    self.present, self.starts, self.config = present, starts, config
    self.windows, self.cleaned = {}, {}

  def check(self, m, k):
    x, fs = self.present[m]
    a = int(round(self.starts[k] * fs))
    n = int(round(self.config.segment_seconds * fs))
    w, reason = check_window(x[a : a + n], fs, self.config)
    self.windows[m, k] = w
    return reason

  def quality(self, m, k):
    fs = self.present[m][1]
    c = self.cleaned[m, k] = clean(self.windows[m, k], fs, m, self.config)
    return quality(c, fs, m, self.config)

  def resampled(self, m, k):
    c = self.cleaned[m, k]
    return resample(
        c,
        self.present[m][1],
        self.config.target_fs,
        self.config.segment_length,
        self.config.resample_method,
    )

  def heart_rate(self, k):
    if ("ecg", k) not in self.cleaned:
      return math.nan, self.check("ecg", k) or "missing"
    return heart_rate(self.cleaned["ecg", k], self.present["ecg"][1])
