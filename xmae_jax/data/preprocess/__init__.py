"""Preprocessing as xMAE's: clean, quality, resample to 100 Hz, 10-s windows, min-max to [-1, 1].

One function per step, so that `xmae-prepare`, `load_encoder().embed` and evaluation share them.
Every name below is importable from this package (`preprocess.segment_recording`); the modules:

  config          PreprocessConfig (stored in the dataset manifest), PreprocessError, Segment
  windows         input checks; bad_intervals (long NaN runs and flat lines, cut out), the
                  good_stretches between them (with modalities "any" only where every modality
                  has one: union_stretches), window_starts, check_window (per window:
                  interpolate short NaN gaps, reject what is still NaN or flat)
  transforms      clean (NeuroKit2 ecg_clean "neurokit" / ppg_clean "elgendi" at the source
                  rate), resample (to 100 Hz with nk.signal_resample "interpolation"), minmax
  signal_quality  quality (template-match quality, 15th percentile, at the source rate, before
                  resampling) and quality_fast (the same result without NeuroKit's overhead)
  beats           the one R-peak and pulse-peak finder (find_rpeaks, find_pulse_peaks), heart
                  rate, R-to-pulse delays (pulse_delay)
  meta            derive_window_meta: window_start_s, seconds_to_alarm, hr, sbp/dbp (arterial
                  pressure beats), each NaN with a counted reason when unusable
  segment         segment_recording: the whole path for one continuous multi-modality recording
                  -> segments; ppg_shift (how far a recording's PPG is moved earlier: a fixed
                  recording-system delay, or measured per recording so that every recording's
                  R-peak-to-pulse delay becomes the same)
  unbatched       segment_recording_unbatched: the same one window at a time, the oracle
  alignment       the recorded PPG shift read back (ppg_alignment, alignment_note) and applied
                  to recordings given as arrays (align_rows)
  inference       prepare_for_inference: raw (N, L) at any fs -> (N', 1000) model inputs,
                  windowed as segment_recording windows a recording
  fast            faster equivalents of NeuroKit2/scipy steps, with the versions they match

Every modality is windowed on the time axis at its own sampling rate, so multi-rate recordings
(e.g. ECG at 250 Hz and PPG at 125 Hz) need no common rate before the 100-Hz resampling.
"""

from __future__ import annotations

from pathlib import Path

from xmae_jax.data.preprocess.alignment import align_rows
from xmae_jax.data.preprocess.alignment import alignment_note
from xmae_jax.data.preprocess.alignment import ppg_alignment
from xmae_jax.data.preprocess.alignment import prepare_aligned_rows
from xmae_jax.data.preprocess.beats import HR_RANGE
from xmae_jax.data.preprocess.beats import MIN_BEATS
from xmae_jax.data.preprocess.beats import find_pulse_peaks
from xmae_jax.data.preprocess.beats import find_rpeaks
from xmae_jax.data.preprocess.beats import heart_rate
from xmae_jax.data.preprocess.beats import heart_rate_from_peaks
from xmae_jax.data.preprocess.beats import next_pulse_delays
from xmae_jax.data.preprocess.beats import pulse_delay
from xmae_jax.data.preprocess.config import ALIGN_MAX_DELAY_S
from xmae_jax.data.preprocess.config import ALIGN_MIN_BEATS
from xmae_jax.data.preprocess.config import ALIGN_MIN_QUALITY
from xmae_jax.data.preprocess.config import REQUIREMENTS
from xmae_jax.data.preprocess.config import SEGMENT_LENGTH
from xmae_jax.data.preprocess.config import SEGMENT_SECONDS
from xmae_jax.data.preprocess.config import TARGET_FS
from xmae_jax.data.preprocess.config import PreprocessConfig
from xmae_jax.data.preprocess.config import PreprocessError
from xmae_jax.data.preprocess.config import Segment
from xmae_jax.data.preprocess.fast import LibraryVersionError
from xmae_jax.data.preprocess.inference import check_row_length
from xmae_jax.data.preprocess.inference import prepare_for_inference
from xmae_jax.data.preprocess.meta import ABP_MIN_INTERVAL_S
from xmae_jax.data.preprocess.meta import ABP_PROMINENCE
from xmae_jax.data.preprocess.meta import DBP_RANGE
from xmae_jax.data.preprocess.meta import MIN_PULSE_PRESSURE
from xmae_jax.data.preprocess.meta import SBP_RANGE
from xmae_jax.data.preprocess.meta import blood_pressure
from xmae_jax.data.preprocess.meta import derive_window_meta
from xmae_jax.data.preprocess.segment import ppg_shift
from xmae_jax.data.preprocess.segment import segment_recording
from xmae_jax.data.preprocess.signal_quality import quality
from xmae_jax.data.preprocess.signal_quality import quality_fast
from xmae_jax.data.preprocess.signal_quality import quality_vector
from xmae_jax.data.preprocess.signal_quality import templatematch
from xmae_jax.data.preprocess.transforms import clean
from xmae_jax.data.preprocess.transforms import minmax
from xmae_jax.data.preprocess.transforms import resample
from xmae_jax.data.preprocess.unbatched import segment_recording_unbatched
from xmae_jax.data.preprocess.windows import as_signal
from xmae_jax.data.preprocess.windows import bad_intervals
from xmae_jax.data.preprocess.windows import check_sampling_rate
from xmae_jax.data.preprocess.windows import check_window
from xmae_jax.data.preprocess.windows import good_stretches
from xmae_jax.data.preprocess.windows import longest_run
from xmae_jax.data.preprocess.windows import runs
from xmae_jax.data.preprocess.windows import union_stretches
from xmae_jax.data.preprocess.windows import window_starts

__all__ = [
    "ABP_MIN_INTERVAL_S",
    "ABP_PROMINENCE",
    "ALIGN_MAX_DELAY_S",
    "ALIGN_MIN_BEATS",
    "ALIGN_MIN_QUALITY",
    "DBP_RANGE",
    "HR_RANGE",
    "MIN_BEATS",
    "MIN_PULSE_PRESSURE",
    "REQUIREMENTS",
    "SBP_RANGE",
    "SEGMENT_LENGTH",
    "SEGMENT_SECONDS",
    "TARGET_FS",
    "LibraryVersionError",
    "PreprocessConfig",
    "PreprocessError",
    "Segment",
    "align_rows",
    "alignment_note",
    "as_signal",
    "bad_intervals",
    "blood_pressure",
    "check_row_length",
    "check_sampling_rate",
    "check_window",
    "clean",
    "code_files",
    "derive_window_meta",
    "find_pulse_peaks",
    "find_rpeaks",
    "good_stretches",
    "heart_rate",
    "heart_rate_from_peaks",
    "longest_run",
    "minmax",
    "next_pulse_delays",
    "ppg_alignment",
    "ppg_shift",
    "prepare_aligned_rows",
    "prepare_for_inference",
    "pulse_delay",
    "quality",
    "quality_fast",
    "quality_vector",
    "resample",
    "runs",
    "segment_recording",
    "segment_recording_unbatched",
    "templatematch",
    "union_stretches",
    "window_starts",
]


def code_files() -> list[Path]:
  """The package's source files, in a fixed order: what a cache of prepared records depends
  on (xmae-prepare keys its cache on their bytes)."""
  return sorted(Path(__file__).parent.glob("*.py"))
