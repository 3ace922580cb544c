"""The simulator: PPG pulses follow R peaks by the subject's PTT; metadata shapes the signals."""

import warnings

import neurokit2 as nk
import numpy as np
import pytest

from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import synthetic

FS = 250.0


def _peaks(rec):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ecg, fs = rec.signals["ecg"]
    ppg, _ = rec.signals["ppg"]
    _, e = nk.ecg_peaks(nk.ecg_clean(ecg, sampling_rate=fs), sampling_rate=fs)
    _, p = nk.ppg_peaks(nk.ppg_clean(ppg, sampling_rate=fs), sampling_rate=fs)
  return np.asarray(e["ECG_R_Peaks"]) / fs, np.asarray(p["PPG_Peaks"]) / fs


@pytest.mark.parametrize("index", [0, 1, 2])
def test_ppg_peaks_follow_r_peaks_by_the_configured_delay(index):
  rec = synthetic.simulate_subject(
      5, index, minutes=0.5, fs=FS, pvc_subjects=0.0, artifact_rate=0.0
  )
  p = synthetic.subject_params(5, index, pvc_subjects=0.0)
  r_peaks, ppg_peaks = _peaks(rec)
  assert len(r_peaks) >= 0.5 * 60 * p["hr"] / 60 * 0.8
  # each PPG peak belongs to the last R peak before it that is at least the PTT away
  prior = np.searchsorted(r_peaks, ppg_peaks) - 1
  ok = prior >= 0
  delay = ppg_peaks[ok] - r_peaks[prior[ok]]
  expected = p["ptt_ms"] / 1000 + synthetic.pulse_peak_offset(p)
  # the cleaning band-pass moves the PPG peak a little; PTT varies +-~10 ms beat to beat
  assert np.median(delay) == pytest.approx(expected, abs=0.025)
  assert np.mean(np.abs(delay - expected) < 0.05) > 0.9


def test_transit_time_and_pulse_shape_follow_age_and_pressure():
  params = [synthetic.subject_params(11, i) for i in range(300)]
  age = np.array([p["age"] for p in params])
  sbp = np.array([p["sbp"] for p in params])
  ptt = np.array([p["ptt_ms"] for p in params])
  refl = np.array([p["refl_delay"] for p in params])
  assert np.corrcoef(age, sbp)[0, 1] > 0.3
  assert np.corrcoef(sbp, ptt)[0, 1] < -0.5 and np.corrcoef(age, ptt)[0, 1] < -0.5
  assert np.corrcoef(age, refl)[0, 1] < -0.8  # stiffer arteries: earlier reflection
  # within a subject, beat-to-beat BP changes move the PTT the other way (window means)
  rec = synthetic.simulate_subject(11, 0, minutes=2, fs=125.0, artifact_rate=0.0)
  segs, _ = pp.segment_recording(
      rec.signals, pp.PreprocessConfig(stride_seconds=2.0), series=rec.series
  )
  w_sbp = np.array([s.meta["sbp"] for s in segs])
  w_ptt = np.array([s.meta["ptt_ms"] for s in segs])
  assert np.corrcoef(w_sbp, w_ptt)[0, 1] < -0.8


def test_pvc_beats_show_in_both_signals():
  rec = synthetic.simulate_subject(
      2, 4, minutes=1, fs=FS, pvc_subjects=1.0, pvc_rate=0.15, artifact_rate=0.0
  )
  p = synthetic.subject_params(2, 4, pvc_subjects=1.0, pvc_rate=0.15)
  pvc_times = rec.events["pvc"][:, 0]
  assert len(pvc_times) >= 3
  ecg, fs = rec.signals["ecg"]
  ppg, _ = rec.signals["ppg"]
  # ECG: the PVC complex is wide: its width at half amplitude (cleaned ECG) is about double
  clean = nk.ecg_clean(ecg, sampling_rate=fs)

  def qrs_width(t):
    k, w = int(round(t * fs)), int(0.15 * fs)
    a = np.abs(clean[k - w : k + w])
    return np.count_nonzero(a > 0.5 * a.max()) / fs

  r_peaks, _ = _peaks(rec)
  normal = [t for t in r_peaks if np.min(np.abs(pvc_times - t)) > 0.3 and 1 < t < 58]
  wide = np.median([qrs_width(t) for t in pvc_times if 1 < t < 58])
  assert wide > 1.8 * np.median([qrs_width(t) for t in normal])

  # PPG: the pulse of a PVC is small
  def pulse_amp(t):
    foot = t + p["ptt_ms"] / 1000
    a, b = int(foot * fs), int((foot + 0.3) * fs)
    return ppg[a:b].max() - ppg[a]

  small = np.median([pulse_amp(t) for t in pvc_times if 1 < t < 58])
  assert small < 0.5 * np.median([pulse_amp(t) for t in normal])
  segs, _ = pp.segment_recording(rec.signals, pp.PreprocessConfig(), events=rec.events)
  assert sum(s.labels["pvc"] for s in segs) >= 3  # the windows holding them are labelled


def test_same_seed_same_signals_other_seed_other_signals():
  a = synthetic.simulate_subject(9, 3, minutes=0.25)
  b = synthetic.simulate_subject(9, 3, minutes=0.25)
  c = synthetic.simulate_subject(10, 3, minutes=0.25)
  for m in ("ecg", "ppg"):
    np.testing.assert_array_equal(a.signals[m][0], b.signals[m][0])
    assert not np.allclose(a.signals[m][0], c.signals[m][0])
  assert a.meta == b.meta and a.meta != c.meta


def test_motion_artefacts_lower_quality():
  rec = synthetic.simulate_subject(4, 7, minutes=3, fs=125.0, pvc_subjects=0.0, artifact_rate=3.0)
  segs, _ = pp.segment_recording(rec.signals, pp.PreprocessConfig(), events=rec.events)
  moved = [s.quality["ppg"] for s in segs if s.labels["motion"]]
  still = [s.quality["ppg"] for s in segs if not s.labels["motion"]]
  assert moved and still
  assert np.median(still) > 0.9 and np.median(moved) < np.median(still)
