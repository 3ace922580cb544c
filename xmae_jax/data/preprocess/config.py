"""The preprocessing's parameters (PreprocessConfig, stored in every dataset manifest), its
error, and the prepared window (Segment)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xmae_jax.errors import XmaeError

TARGET_FS = 100
SEGMENT_SECONDS = 10.0
SEGMENT_LENGTH = 1000
REQUIREMENTS = {"both": ("ppg", "ecg"), "any": (), "ppg": ("ppg",), "ecg": ("ecg",)}
# pulse_delay: the windows it measures on, the beats it needs, the longest R-to-pulse delay
ALIGN_MIN_QUALITY = 0.8
ALIGN_MIN_BEATS = 20
ALIGN_MAX_DELAY_S = 1.0


class PreprocessError(XmaeError):
  """Input that cannot be preprocessed (wrong shape, unknown sampling rate, too short)."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Every parameter of the preprocessing; stored verbatim in the dataset manifest."""

  target_fs: int = TARGET_FS
  segment_seconds: float = SEGMENT_SECONDS
  stride_seconds: float | None = None  # None: = segment_seconds (non-overlapping)
  ecg_clean_method: str = "neurokit"
  ppg_clean_method: str = "elgendi"
  quality_method: str = "templatematch"
  quality_percentile: float = 15.0
  resample_method: str = "interpolation"
  max_nan_gap_seconds: float = 0.1  # shorter NaN gaps are linearly interpolated
  max_flat_seconds: float = 2.0  # a longer run of identical samples is a flat line
  min_fs: float = 20.0  # below this a rate is treated as unknown/invalid
  modalities: str = "both"  # which modalities a kept segment must have
  min_quality: float | None = None  # drop at prepare time (else the pipeline filters)
  # A recording system's own delay of the PPG behind the ECG (a bedside monitor's processing:
  # 150-250 ms on Challenge 2015), on top of the physiological pulse arrival time. The PPG is
  # moved this much earlier before windowing, so a window pairs each beat's R-peak with its
  # pulse about as the body does; 0 keeps the channels as recorded.
  ppg_delay_seconds: float = 0.0
  # Or measured per recording: the PPG is moved so that the median delay from an R-peak to the
  # next PPG systolic peak (pulse_delay, on the recording's own windows) becomes this many
  # seconds; ppg_delay_seconds is the fallback for a recording with too few clean beats. On
  # monitor data whose own delay differs between recordings, this takes that delay (and with
  # it each recording's mean pulse arrival time) out of the pairing; within a recording the
  # beat-to-beat timing stays as recorded.
  ppg_align_seconds: float | None = None

  def __post_init__(self):
    if self.modalities not in REQUIREMENTS:
      raise PreprocessError(
          f"modalities must be one of {sorted(REQUIREMENTS)}, " f"got {self.modalities!r}"
      )
    if self.segment_seconds * self.target_fs != round(self.segment_seconds * self.target_fs):
      raise PreprocessError("segment_seconds * target_fs must be a whole number of samples")
    if self.stride_seconds is not None and self.stride_seconds <= 0:
      raise PreprocessError(f"stride_seconds must be positive, got {self.stride_seconds}")
    if self.ppg_align_seconds is not None and not 0 <= self.ppg_align_seconds <= ALIGN_MAX_DELAY_S:
      raise PreprocessError(
          f"ppg_align_seconds must be in [0, {ALIGN_MAX_DELAY_S:g}], "
          f"got {self.ppg_align_seconds}"
      )
    if not 0 <= self.ppg_delay_seconds < self.segment_seconds:
      raise PreprocessError(
          f"ppg_delay_seconds must be in [0, {self.segment_seconds:g}), "
          f"got {self.ppg_delay_seconds}"
      )

  @property
  def segment_length(self) -> int:
    return int(round(self.segment_seconds * self.target_fs))

  @property
  def stride(self) -> float:
    return self.segment_seconds if self.stride_seconds is None else self.stride_seconds

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["segment_length"] = self.segment_length
    d["normalization"] = "per-segment min-max to [-1, 1]"
    d["quality"] = (
        f"{self.quality_percentile:g}th percentile of nk.<modality>_quality "
        f"{self.quality_method}, at the source rate, before resampling"
    )
    return d


@dataclasses.dataclass
class Segment:
  """One prepared window: both modalities at target_fs (absent ones are None)."""

  index: int
  start_s: float
  signals: dict[str, np.ndarray]
  quality: dict[str, float]
  meta: dict[str, Any]
  labels: dict[str, Any]
