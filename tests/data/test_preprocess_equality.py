"""segment_recording (windows of a record batched, quality_fast) equals the straightforward
per-window path (segment_recording_unbatched: clean, NeuroKit's peak detection and rate) on real
records: every PhysioNet fixture record and four ICU records of the PhysioNet/CinC Challenge
2015 training set (250 Hz ECG + PLETH; skipped when the data folder is absent).

Tolerance: none beyond the storage format. The same segments are kept and dropped (same
indices, start times and drop/note counts), quality values are equal to 1e-12 (they are stored
as float64 and no step of the fast path reorders arithmetic, so in practice they are identical),
and the samples are equal after the float16 cast records store them in; the float32 segments are
also asserted equal to 1e-6 so a difference hidden by float16 rounding would still show.
"""

import sys
import warnings

import numpy as np
import pytest

from xmae_jax.data import preprocess as pp
from xmae_jax.data.preprocess import fast
from xmae_jax.data.preprocess import segment
from xmae_jax.data.preprocess import unbatched
from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import wfdb as wfdb_source

# two long (330 s) and two short (300 s) records, four alarm types
CHALLENGE_RECORDS = ("a104s", "b183l", "f121l", "v128s")
CONFIGS = {
    "default": pp.PreprocessConfig(),
    # drops at prepare time and a single required modality exercise the early exits
    "min_quality": pp.PreprocessConfig(modalities="ecg", min_quality=0.9),
    "any": pp.PreprocessConfig(modalities="any", min_quality=0.5, stride_seconds=7.5),
}


def _recordings(units):
  for unit in units:
    for item in wfdb_source.read(unit, {}):
      if isinstance(item, Recording):
        yield unit, item


def _assert_same(item, config):
  fast, fast_stats = pp.segment_recording(item.signals, config)
  slow, slow_stats = pp.segment_recording_unbatched(item.signals, config)
  assert fast_stats == slow_stats
  assert [(s.index, s.start_s) for s in fast] == [(s.index, s.start_s) for s in slow]
  for a, b in zip(fast, slow):
    assert set(a.signals) == set(b.signals) and set(a.quality) == set(b.quality)
    for m in a.quality:
      assert a.quality[m] == pytest.approx(b.quality[m], abs=1e-12, rel=0)
    for m in a.signals:
      assert a.signals[m].dtype == b.signals[m].dtype == np.float32
      np.testing.assert_array_equal(
          a.signals[m].astype(np.float16), b.signals[m].astype(np.float16)
      )
      np.testing.assert_allclose(a.signals[m], b.signals[m], atol=1e-6, rtol=0)
  return len(fast)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_equals_unbatched_on_physionet(physionet_dir, name):
  units = wfdb_source.list_inputs(str(physionet_dir), {})
  kept = [_assert_same(item, CONFIGS[name]) for _, item in _recordings(units)]
  assert len(kept) >= 4 and sum(kept) > 0


def test_batched_equals_unbatched_on_challenge2015(physionet_dir):
  challenge = physionet_dir.parent / "challenge2015"
  if not challenge.is_dir():
    pytest.skip(f"{challenge} not present (../shared beside the checkout)")
  units = [str(challenge / r) for r in CHALLENGE_RECORDS]
  kept = [_assert_same(item, CONFIGS["default"]) for _, item in _recordings(units)]
  assert len(kept) == len(CHALLENGE_RECORDS) and sum(kept) > 0


def test_quality_fast_equals_quality_on_edge_cases():
  fs = 250.0
  rng = np.random.default_rng(0)
  t = np.arange(int(10 * fs)) / fs
  cases = [
      np.zeros(2500),
      rng.normal(size=2500),
      np.sin(2 * np.pi * 0.05 * t),
      np.sin(2 * np.pi * 1.2 * t) ** 15,
      np.sin(2 * np.pi * 0.3 * t) ** 21,
      rng.normal(size=600),
  ]
  for x in cases:
    for m in ("ecg", "ppg"):
      c = pp.clean(x, fs, m, CONFIGS["default"])
      assert pp.quality_fast(c, fs, m, CONFIGS["default"]) == pp.quality(
          c, fs, m, CONFIGS["default"]
      )


@pytest.mark.parametrize("modalities", ["both", "ppg", "any"])
def test_record_steps_follow_the_per_window_decisions(modalities):
  # windows whose required PPG fails its check after a passing ECG (the cuts of
  # segment_recording normally remove such windows first): both step strategies must make the
  # same decisions and ask for no step the other would not
  import collections

  import neurokit2 as nk

  fs = 125.0
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=3)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=3)
  ppg[int(12 * fs) : int(14 * fs)] = np.nan
  present = {"ecg": (ecg, fs), "ppg": (ppg, fs)}
  config = pp.PreprocessConfig(modalities=modalities)
  required = pp.REQUIREMENTS[modalities]
  starts = [0.0, 10.0, 20.0]
  results = []
  for steps_class in (segment.BatchedSteps, unbatched.WindowSteps):
    steps, stats = steps_class(present, starts, config, required), collections.Counter()
    out = [
        segment.one_window(present, k, t0, config, required, stats, steps)
        for k, t0 in enumerate(starts)
    ]
    results.append(
        (
            [
                (
                    None
                    if s is None
                    else (s.quality, {m: v.tolist() for m, v in s.signals.items()}),
                    r,
                )
                for s, r in out
            ],
            stats,
        )
    )
  assert results[0] == results[1]
  assert results[0][0][1][1] in (None, "nan_run_ppg")


def test_peak_finders_equal_neurokits():
  import neurokit2 as nk

  fs = 250.0
  config = CONFIGS["default"]
  ecg = pp.clean(nk.ecg_simulate(duration=10, sampling_rate=250, random_state=4), fs, "ecg", config)
  ppg = pp.clean(nk.ppg_simulate(duration=10, sampling_rate=250, random_state=4), fs, "ppg", config)
  want_ecg = nk.ecg_findpeaks(ecg, sampling_rate=fs, method="neurokit")["ECG_R_Peaks"]
  want_ppg = nk.ppg_findpeaks(ppg, sampling_rate=fs, method="elgendi")["PPG_Peaks"]
  assert len(want_ecg) > 5 and len(want_ppg) > 5
  np.testing.assert_array_equal(fast.ecg_findpeaks(ecg, fs), want_ecg)
  np.testing.assert_array_equal(fast.ppg_findpeaks(ppg, fs), want_ppg)
  np.testing.assert_array_equal(pp.find_rpeaks(ecg, fs), want_ecg)
  np.testing.assert_array_equal(pp.find_pulse_peaks(ppg, fs), want_ppg)


def test_a_moved_scipy_internal_fails_with_the_versions_matched(monkeypatch, physionet_dir):
  # the one reach into scipy's privates: a scipy without them stops preprocessing with one
  # clear error instead of every window's quality reading as "too few beats" or every unit of
  # xmae-prepare being skipped as unreadable
  import neurokit2 as nk

  from xmae_jax.data import prepare_units

  monkeypatch.setitem(sys.modules, "scipy.signal._peak_finding_utils", None)
  fast.scipy_peak_finding.cache_clear()
  try:
    ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=3)
    with pytest.raises(pp.LibraryVersionError, match=r"scipy .*_local_maxima_1d.*scipy 1\.17"):
      pp.find_rpeaks(ecg, 125.0)
    with pytest.raises(pp.LibraryVersionError, match="constraints.txt"):
      pp.segment_recording({"ecg": (ecg, 125.0)}, pp.PreprocessConfig(modalities="ecg"))
    with pytest.raises(pp.LibraryVersionError):
      prepare_units.process_unit("wfdb", str(physionet_dir / "a103l"), {}, pp.PreprocessConfig())
  finally:
    fast.scipy_peak_finding.cache_clear()


# The calls evaluation/reconstruction.py made before it used pp.find_rpeaks/find_pulse_peaks.
def _neurokit_rpeaks(x, fs):
  import neurokit2 as nk

  return nk.ecg_peaks(x, sampling_rate=int(round(fs)), method="neurokit")[1]["ECG_R_Peaks"]


def _neurokit_pulse_peaks(x, fs):
  import neurokit2 as nk

  return nk.ppg_peaks(x, sampling_rate=int(round(fs)), method="elgendi")[1]["PPG_Peaks"]


def _neurokit_or_empty(find, x, fs):
  x = np.asarray(x, np.float64)
  if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
    return np.zeros(0, int)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return np.asarray(find(x, fs), int)
  except Exception:  # pylint: disable=broad-except
    return np.zeros(0, int)


def test_the_finders_equal_neurokits_peaks_on_reconstruction_like_signals():
  # min-max windows at 100 Hz as a reconstruction gives them: clean, late, noisy, blurred,
  # noise alone, flat, with a NaN; the finders must give NeuroKit's ecg_peaks/ppg_peaks indices
  import neurokit2 as nk

  fs = 100.0
  rng = np.random.default_rng(0)
  rows = []
  for i, hr in enumerate((45, 60, 75, 90, 120, 150)):
    # simulated at 250 Hz and resampled as the preprocessing does (NeuroKit 0.3.0's ecgsyn
    # does not finish at 100 Hz)
    ecg = nk.ecg_simulate(duration=10, sampling_rate=250, heart_rate=hr, random_state=i)
    ppg = nk.ppg_simulate(duration=10, sampling_rate=250, heart_rate=hr, random_state=i)
    for x in (pp.resample(ecg, 250, fs, 1000), pp.resample(ppg, 250, fs, 1000)):
      rows += [
          x,
          np.roll(x, 7),
          x + rng.normal(0, 0.3 * np.std(x), x.size),
          np.convolve(x, np.ones(9) / 9, mode="same"),
      ]
  rows += [rng.normal(size=1000) for _ in range(8)]
  rows += [np.zeros(1000), np.r_[np.nan, rows[0][1:]], rows[0][:150]]
  rows = [pp.minmax(x).astype(np.float32) if len(x) == 1000 else x for x in rows]
  found = 0
  for x in rows:
    want = _neurokit_or_empty(_neurokit_rpeaks, x, fs)
    np.testing.assert_array_equal(pp.find_rpeaks(x, fs), want)
    want_pulse = _neurokit_or_empty(_neurokit_pulse_peaks, x, fs)
    np.testing.assert_array_equal(pp.find_pulse_peaks(x, fs), want_pulse)
    found += len(want) > 0 and len(want_pulse) > 0
  assert found >= 40
