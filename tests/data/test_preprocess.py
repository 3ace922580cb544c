"""Preprocessing steps: quality equals NeuroKit's, windows, cuts, drops, inference helper."""

import warnings

import neurokit2 as nk
import numpy as np
import pytest

from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import synthetic

CFG = pp.PreprocessConfig()


@pytest.fixture(scope="module")
def subject():
  return synthetic.simulate_subject(
      3, 1, minutes=0.5, fs=125.0, pvc_subjects=0.0, artifact_rate=0.0
  )


@pytest.mark.parametrize("modality", ["ecg", "ppg"])
def test_templatematch_equals_neurokit(subject, physionet_dir, modality):
  import wfdb

  rec = wfdb.rdrecord(str(physionet_dir / "a103l"), sampto=250 * 30)
  real = rec.p_signal[:, rec.sig_name.index("II" if modality == "ecg" else "PLETH")]
  windows = [
      (subject.signals[modality][0][:1250], 125.0),
      (real[:2500], 250.0),
      (real[2500:5000], 250.0),
  ]
  for x, fs in windows:
    c = pp.clean(x, fs, modality, CFG)
    fn = nk.ecg_quality if modality == "ecg" else nk.ppg_quality
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      ref = np.asarray(fn(c, sampling_rate=fs, method="templatematch"))
    ours = pp.quality_vector(c, fs, modality)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("fs", [62.5, 100.0, 125.0, 249.89, 500.0])
def test_cleaning_equals_neurokit(fs):
  rng = np.random.default_rng(int(fs))
  x = np.cumsum(rng.normal(size=int(10 * fs))) + rng.normal(size=int(10 * fs))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    np.testing.assert_allclose(
        pp.clean(x, fs, "ecg", CFG),
        nk.ecg_clean(x, sampling_rate=fs, method="neurokit"),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        pp.clean(x, fs, "ppg", CFG), nk.ppg_clean(x, sampling_rate=fs, method="elgendi"), atol=1e-12
    )
    if fs < 100:
      return  # NeuroKit's biosppy FIR needs a higher rate
    other = pp.PreprocessConfig(ecg_clean_method="biosppy")  # not re-implemented: NeuroKit
    np.testing.assert_allclose(
        pp.clean(x, fs, "ecg", other),
        nk.ecg_clean(x, sampling_rate=fs, method="biosppy"),
        atol=1e-12,
    )


def test_check_window_repairs_short_gaps_and_rejects_runs_and_flats():
  fs = 100.0
  x = np.sin(np.arange(1000) / 30.0)
  gap = x.copy()
  gap[500:505] = np.nan  # 50 ms: interpolated
  fixed, why = pp.check_window(gap, fs, CFG)
  assert why is None and np.all(np.isfinite(fixed))
  np.testing.assert_allclose(fixed[500:505], x[500:505], atol=0.02)
  run = x.copy()
  run[100:200] = np.nan  # 1 s: rejected
  assert pp.check_window(run, fs, CFG) == (None, "nan_run")
  flat = x.copy()
  flat[300:600] = 0.25  # 3 s identical samples
  assert pp.check_window(flat, fs, CFG) == (None, "flat_line")


def test_segment_recording_windows_scale_and_labels(subject):
  segs, stats = pp.segment_recording(
      subject.signals, CFG, meta=subject.meta, events=subject.events, series=subject.series
  )
  assert len(segs) == 3 and not any(k.startswith("dropped/") for k in stats)
  for s in segs:
    for m in ("ecg", "ppg"):
      x = s.signals[m]
      assert x.shape == (1000,) and x.dtype == np.float32
      assert x.min() == pytest.approx(-1) and x.max() == pytest.approx(1)
      assert 0.9 <= s.quality[m] <= 1.0  # clean simulated beats match their template
    assert set(s.labels) == {"pvc", "motion"} and s.labels["pvc"] == 0
    assert {"age", "sex", "bmi", "sbp", "dbp", "hr", "ptt_ms"} <= set(s.meta)
  assert [s.start_s for s in segs] == [0.0, 10.0, 20.0]
  strided, _ = pp.segment_recording(subject.signals, pp.PreprocessConfig(stride_seconds=5.0))
  assert [s.start_s for s in strided] == [0.0, 5.0, 10.0, 15.0, 20.0]


def test_ppg_delay_moves_ppg_earlier_and_keeps_ecg(subject):
  """ppg_delay_seconds = d pairs ECG at t with PPG recorded at t + d; the ECG is untouched."""
  (ecg, fs), (ppg, _) = subject.signals["ecg"], subject.signals["ppg"]
  k = int(round(0.2 * fs))
  moved, _ = pp.segment_recording(
      {"ecg": (ecg, fs), "ppg": (ppg, fs)},
      pp.PreprocessConfig(stride_seconds=5.0, ppg_delay_seconds=0.2),
  )
  # the same as cutting the PPG's first 0.2 s (and the ECG's last, to the same length) by hand
  by_hand, _ = pp.segment_recording(
      {"ecg": (ecg[: len(ecg) - k], fs), "ppg": (ppg[k:], fs)},
      pp.PreprocessConfig(stride_seconds=5.0),
  )
  plain, _ = pp.segment_recording(
      {"ecg": (ecg, fs), "ppg": (ppg, fs)}, pp.PreprocessConfig(stride_seconds=5.0)
  )
  assert [s.start_s for s in moved] == [s.start_s for s in by_hand] == [0.0, 5.0, 10.0, 15.0]
  assert len(plain) == 5  # the last window needs PPG past the recording's end
  for a, b, c in zip(moved, by_hand, plain):
    np.testing.assert_array_equal(a.signals["ppg"], b.signals["ppg"])
    np.testing.assert_array_equal(a.signals["ecg"], c.signals["ecg"])
    assert not np.array_equal(a.signals["ppg"], c.signals["ppg"])
  for bad in (-0.1, 10.0):
    with pytest.raises(pp.PreprocessError, match="ppg_delay_seconds"):
      pp.PreprocessConfig(ppg_delay_seconds=bad)


def test_ppg_align_gives_every_recording_the_same_pulse_delay():
  """ppg_align_seconds measures each recording's R-peak-to-systolic-peak delay and moves its
  PPG so that the delay becomes the target; too few clean beats fall back to the fixed delay."""
  fs = 125.0
  measured = []
  for subject_seed in (1, 2):
    rec = synthetic.simulate_subject(
        subject_seed, 1, minutes=1.0, fs=fs, pvc_subjects=0.0, artifact_rate=0.0
    )
    plain, _ = pp.segment_recording(rec.signals, CFG)
    before = pp.pulse_delay(plain, CFG.target_fs)
    segs, stats = pp.segment_recording(rec.signals, pp.PreprocessConfig(ppg_align_seconds=0.1))
    after = pp.pulse_delay(segs, CFG.target_fs)
    assert before > 0.3 and after == pytest.approx(0.1, abs=0.015)
    assert stats["ppg_shift/measured"] == 1 and not stats["ppg_shift/fallback"]
    assert [s.meta["ppg_shift_s"] for s in segs] == pytest.approx(
        [before - 0.1] * len(segs), abs=1e-4
    )
    measured.append(before)
  assert measured[0] != measured[1]  # different recordings were moved by different shifts
  # pulses already sooner than the target: kept as recorded, counted
  segs, stats = pp.segment_recording(rec.signals, pp.PreprocessConfig(ppg_align_seconds=0.9))
  assert stats["ppg_shift/clipped"] == 1 and segs[0].meta["ppg_shift_s"] == 0.0
  assert pp.pulse_delay(segs, CFG.target_fs) == pytest.approx(measured[1], abs=1e-9)
  # no R-peaks to measure from (noise for an ECG): the fixed delay is used, counted
  rng = np.random.default_rng(0)
  noisy = {"ecg": (rng.normal(size=len(rec.signals["ecg"][0])), fs), "ppg": rec.signals["ppg"]}
  segs, stats = pp.segment_recording(
      noisy, pp.PreprocessConfig(ppg_align_seconds=0.1, ppg_delay_seconds=0.2)
  )
  assert stats["ppg_shift/fallback"] == 1 and not stats["ppg_shift/measured"]
  assert {s.meta["ppg_shift_s"] for s in segs} == {0.2}
  with pytest.raises(pp.PreprocessError, match="ppg_align_seconds"):
    pp.PreprocessConfig(ppg_align_seconds=1.5)


def test_events_and_series_map_to_window_labels_and_meta():
  fs = 125.0
  t = np.arange(int(30 * fs)) / fs
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  segs, _ = pp.segment_recording(
      {"ecg": (ecg, fs), "ppg": (ppg, fs)},
      CFG,
      events={"pvc": np.array([[12.0, 12.0]]), "motion": np.array([[19.0, 21.0]])},
      series={"sbp": (t[::125], np.where(t[::125] < 10, 100.0, 140.0))},
  )
  assert [s.labels["pvc"] for s in segs] == [0, 1, 0]
  assert [s.labels["motion"] for s in segs] == [0, 1, 1]
  assert [s.meta["sbp"] for s in segs] == [100.0, 140.0, 140.0]


def test_nan_runs_and_flat_lines_are_cut_and_windows_resume_after_them():
  fs = 125.0
  ecg = nk.ecg_simulate(duration=40, sampling_rate=125, heart_rate=70, random_state=1)
  ppg = nk.ppg_simulate(duration=40, sampling_rate=125, heart_rate=70, random_state=1)
  ecg[int(2 * fs) : int(5 * fs)] = np.nan  # 3-s NaN run
  ppg[int(25 * fs) : int(28 * fs)] = ppg[int(25 * fs)]  # 3-s flat line
  segs, stats = pp.segment_recording({"ecg": (ecg, fs), "ppg": (ppg, fs)}, CFG)
  assert stats["cut/nan_run_ecg"] == 1 and stats["cut/flat_line_ppg"] == 1
  starts = [s.start_s for s in segs]
  assert starts == [5.0, 15.0, 28.0]  # each stretch windowed from its start
  for s in segs:
    assert not (s.start_s < 5.0 or 25.0 - 10 < s.start_s < 28.0)


def test_missing_modality_and_min_quality_and_too_short():
  fs = 125.0
  ppg = nk.ppg_simulate(duration=20, sampling_rate=125, heart_rate=70, random_state=2)
  segs, stats = pp.segment_recording({"ppg": (ppg, fs)}, CFG)
  assert segs == [] and stats["dropped/missing_ecg"] == 2
  segs, _ = pp.segment_recording({"ppg": (ppg, fs)}, pp.PreprocessConfig(modalities="any"))
  assert len(segs) == 2 and set(segs[0].signals) == {"ppg"} and "ecg" not in segs[0].quality
  noise = np.random.default_rng(0).normal(size=len(ppg))
  segs, stats = pp.segment_recording(
      {"ppg": (noise, fs)}, pp.PreprocessConfig(modalities="ppg", min_quality=0.9)
  )
  assert segs == [] and stats["dropped/low_quality_ppg"] == 2
  segs, stats = pp.segment_recording(
      {"ppg": (ppg[:1000], fs)}, pp.PreprocessConfig(modalities="ppg")
  )
  assert segs == [] and stats["dropped/too_short"] == 1


def test_quality_falls_back_to_zero_with_a_reason_when_there_are_no_beats():
  fs = 125.0
  x = np.sin(2 * np.pi * 0.05 * np.arange(1250) / fs) + 1e-3 * np.arange(1250)
  q, why = pp.quality(pp.clean(x, fs, "ecg", CFG), fs, "ecg", CFG)
  assert q == 0.0 and why in ("too_few_beats", "undefined_correlation")
  q, why = pp.quality(np.zeros(300), fs, "ppg", CFG)  # shorter than NeuroKit's 4 s minimum
  assert (q, why) == (0.0, "too_few_beats")


def test_multi_rate_windows_stay_aligned():
  # the same pulse train given at 250 Hz (ECG slot) and 125 Hz (PPG slot): each window of the
  # two must line up (zero-phase filters, windows cut on the time axis at each rate)
  beats = np.cumsum(np.random.default_rng(0).uniform(0.6, 1.0, 40))

  def train(fs):
    t = np.arange(int(30 * fs)) / fs
    return np.exp(-0.5 * ((t[:, None] - beats[None]) / 0.03) ** 2).sum(1)

  segs, _ = pp.segment_recording(
      {"ecg": (train(250.0), 250.0), "ppg": (train(125.0), 125.0)}, pp.PreprocessConfig()
  )
  assert len(segs) == 3
  for s in segs:
    a, b = s.signals["ecg"] - s.signals["ecg"].mean(), s.signals["ppg"] - s.signals["ppg"].mean()
    xc = np.correlate(a, b, mode="full")
    assert abs(int(np.argmax(xc)) - 999) <= 2  # lag within 20 ms


def test_bad_sampling_rate_and_shape_raise():
  with pytest.raises(pp.PreprocessError, match="unknown sampling rate"):
    pp.segment_recording({"ecg": (np.zeros(3000), None)}, CFG)
  with pytest.raises(pp.PreprocessError, match="unknown sampling rate"):
    pp.segment_recording({"ecg": (np.zeros(3000), 0.0)}, CFG)
  with pytest.raises(pp.PreprocessError, match="wrong shape"):
    pp.segment_recording({"ecg": (np.zeros((3, 3000)), 125.0)}, CFG)
  with pytest.raises(pp.PreprocessError, match="unknown modality"):
    pp.segment_recording({"abp": (np.zeros(3000), 125.0)}, CFG)


def test_prepare_for_inference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 250 * 25))  # 25 s at 250 Hz -> 2 windows per row
  out, rows = pp.prepare_for_inference(x, 250, return_index=True)
  assert out.shape == (6, 1000) and out.dtype == np.float32
  np.testing.assert_array_equal(rows, [0, 0, 1, 1, 2, 2])
  np.testing.assert_allclose(out.min(1), -1, atol=1e-6)
  np.testing.assert_allclose(out.max(1), 1, atol=1e-6)
  # the first window is the min-max of the first 10 s resampled to 100 Hz
  ref = pp.minmax(pp.resample(x[0, :2500], 250, 100, 1000))
  np.testing.assert_allclose(out[0], ref, atol=1e-6)
  assert pp.prepare_for_inference(x[0, :1000], 100).shape == (1, 1000)
  with pytest.raises(pp.PreprocessError, match="shorter than one 10-s window"):
    pp.prepare_for_inference(x[:, :1000], 250)
  with pytest.raises(pp.PreprocessError, match="transposed"):
    pp.prepare_for_inference(x.T, 250)
  with pytest.raises(pp.PreprocessError, match="NaN"):
    pp.prepare_for_inference(np.full(3000, np.nan), 100)
  with pytest.raises(pp.PreprocessError, match="wrong shape"):
    pp.prepare_for_inference(np.zeros((2, 2, 2000)), 100)
  with pytest.raises(pp.PreprocessError, match="unknown sampling rate"):
    pp.prepare_for_inference(x, "fast")
