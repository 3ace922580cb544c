"""Reconstruction metrics on known cases: perfect -> r = 1 and 0 ms; shifts give their delay."""

import numpy as np
import pytest

from xmae_jax.data import preprocess
from xmae_jax.evaluation import recon_metrics
from xmae_jax.evaluation import reconstruction as recon

FS = 100.0


@pytest.fixture(scope="module")
def ecg():
  import neurokit2 as nk

  rows = [
      nk.ecg_simulate(
          duration=10,
          sampling_rate=int(FS),
          heart_rate=hr,
          method="simple",
          noise=0.0,
          random_state=i,
      )
      for i, hr in enumerate((60, 75, 90))
  ]
  x = np.stack(rows)
  lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
  return (2 * (x - lo) / (hi - lo) - 1).astype(np.float32)


def _masked(n, length=1000, visible=(300, 500)):
  m = np.ones((n, length), bool)
  m[:, visible[0] : visible[1]] = False
  return m


def test_perfect_reconstruction(ecg):
  masked = _masked(len(ecg))
  s, peaks = recon_metrics.summarize(ecg, ecg.copy(), masked, FS)
  assert s["median_r"] == pytest.approx(1.0)
  assert s["true_beats"] >= 20  # 60-90 bpm over 8 masked seconds, 3 segments
  assert s["median_abs_error_ms"] == 0.0
  assert s["share_within_50ms"] == 1.0 and s["sensitivity"] == 1.0 and s["extra_peaks"] == 0
  assert all(len(p["true"]) >= 9 for p in peaks)


@pytest.mark.parametrize("shift,within", [(3, 1.0), (8, 0.0)])
def test_shifted_reconstruction_reports_the_delay(ecg, shift, within):
  masked = _masked(len(ecg))
  late = np.roll(ecg, shift, axis=1)
  s, _ = recon_metrics.summarize(ecg, late, masked, FS)
  assert s["median_abs_error_ms"] == pytest.approx(shift * 1000 / FS, abs=10)
  assert s["median_signed_error_ms"] > 0
  assert s["share_within_50ms"] == pytest.approx(within, abs=0.1)
  assert s["median_r"] < 0.99


def test_flat_reconstruction_misses_every_beat(ecg):
  masked = _masked(len(ecg))
  s, _ = recon_metrics.summarize(ecg, np.zeros_like(ecg), masked, FS)
  assert s["matched_beats"] == 0 and s["share_within_50ms"] == 0.0
  assert np.isnan(s["median_r"])  # a constant reconstruction has no correlation


def test_match_beats_is_one_to_one():
  pairs = recon_metrics.match_beats(np.array([100, 110, 300]), np.array([105, 400]), tolerance=15)
  assert pairs == [(0, 0)] or pairs == [(1, 0)]
  assert len(pairs) == 1


def test_model_reconstruction_masks(tiny_xmae):
  model, config = tiny_xmae
  rng = np.random.default_rng(0)
  ppg = rng.uniform(-1, 1, (5, 1000)).astype(np.float32)
  ecg = rng.uniform(-1, 1, (5, 1000)).astype(np.float32)
  r1, m1 = recon.reconstruct(model, ppg, ecg, seed=1, batch_size=4)
  r2, m2 = recon.reconstruct(model, ppg, ecg, seed=1, batch_size=4)
  assert r1.shape == ecg.shape and m1.shape == ecg.shape
  np.testing.assert_array_equal(m1, m2)
  np.testing.assert_allclose(r1, r2, atol=1e-6)
  # anchor 0.8: 20 of 25 patches (800 of 1000 samples) masked in every row
  np.testing.assert_array_equal(m1.sum(1), 800)
  with pytest.raises(recon.ReconstructionError, match="does not reconstruct"):
    recon.reconstruct(object(), ppg, ecg)


# ---- pulse feet (ppg<-ecg): the same known cases as the R-peaks -------------------------------


@pytest.fixture(scope="module")
def ppg():
  import neurokit2 as nk

  rows = [
      nk.ppg_simulate(
          duration=10,
          sampling_rate=int(FS),
          heart_rate=hr,
          random_state=i,
          drift=0,
          motion_amplitude=0,
          powerline_amplitude=0,
          burst_amplitude=0,
      )
      for i, hr in enumerate((60, 75, 90))
  ]
  x = np.stack(rows)
  lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
  return (2 * (x - lo) / (hi - lo) - 1).astype(np.float32)


def _feet(true, recon_, masked):
  return recon_metrics.summarize(true, recon_, masked, FS, detect=recon_metrics.detect_pulse_feet)


def test_pulse_feet_are_the_troughs_before_the_upstroke(ppg):
  for x in ppg:
    feet = recon_metrics.detect_pulse_feet(x, FS)
    assert len(feet) >= 8  # >= 60 bpm over 10 s
    for f in feet:
      # the lowest sample of its neighbourhood, with the pulse rising after it
      assert x[f] == x[max(0, f - 10) : f + 11].min()
      assert x[min(f + 15, len(x) - 1)] > x[f] + 0.3


def test_perfect_ppg_reconstruction_matches_every_foot(ppg):
  s, peaks = _feet(ppg, ppg.copy(), np.ones(ppg.shape, bool))
  assert s["true_beats"] >= 30  # 60-90 bpm over 10 s, 3 segments
  assert s["median_r"] == pytest.approx(1.0)
  assert s["sensitivity"] == 1.0 and s["share_within_50ms"] == 1.0 and s["extra_peaks"] == 0
  assert s["median_abs_error_ms"] == 0.0
  assert all(np.array_equal(p["true"], p["recon"]) for p in peaks)


def test_ppg_30ms_late_gives_30ms_all_within_50(ppg):
  late = np.concatenate([np.repeat(ppg[:, :1], 3, axis=1), ppg[:, :-3]], axis=1)  # 3 samples
  s, _ = _feet(ppg, late, np.ones(ppg.shape, bool))
  assert s["median_abs_error_ms"] == pytest.approx(30.0)
  assert s["median_signed_error_ms"] == pytest.approx(30.0)
  assert s["sensitivity"] == 1.0 and s["share_within_50ms"] == 1.0


def test_flat_ppg_reconstruction_matches_no_foot(ppg):
  s, peaks = _feet(ppg, np.zeros_like(ppg), np.ones(ppg.shape, bool))
  assert s["true_beats"] >= 30 and s["matched_beats"] == 0
  assert s["sensitivity"] == 0.0 and s["share_within_50ms"] == 0.0
  assert all(len(p["recon"]) == 0 for p in peaks)


def test_directions_of_each_model_kind(tiny_xmae):
  model, config = tiny_xmae
  assert recon.model_directions(model) == ("ecg<-ppg",)
  x = np.zeros((2, 1000), np.float32)
  with pytest.raises(recon.ReconstructionError, match="has no ppg<-ecg"):
    recon.evaluate(model, config, x, x, direction="ppg<-ecg")
  with pytest.raises(recon.ReconstructionError, match="does not reconstruct"):
    recon.model_directions(object())


def _pulses_after(ecg, delay_s):
  """PPG-like waves whose systolic peaks come `delay_s` after each R-peak of `ecg`."""
  t = np.arange(ecg.shape[1])
  rows = []
  for e in ecg:
    peaks = preprocess.find_rpeaks(e, FS) + int(round(delay_s * FS))
    rows.append(sum(np.exp(-0.5 * ((t - p) / 8.0) ** 2) for p in peaks))
  x = np.stack(rows)
  lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
  return 2 * (x - lo) / (hi - lo) - 1


def test_timing_ceiling_credits_ppg_timing_only_when_it_is_the_ecgs(ecg):
  ppg = _pulses_after(ecg, 0.25)
  paired = recon.timing_ceiling(ppg, ecg, FS)
  assert paired["delay_ms_median"] == pytest.approx(250, abs=10)
  assert paired["mse_ppg_timing"] < 0.5 * paired["mse_window_mean"]
  assert paired["mse_r_peaks_own_beat"] <= paired["mse_ppg_timing"] + 1e-3
  # each ECG with another window's PPG (another heart rate): the timing explains nothing
  other = recon.timing_ceiling(np.roll(ppg, 1, axis=0), ecg, FS)
  assert other["mse_window_mean"] == pytest.approx(paired["mse_window_mean"])
  assert other["mse_ppg_timing"] > 0.9 * other["mse_window_mean"]
  with pytest.raises(recon.ReconstructionError, match="timing ceiling"):
    recon.timing_ceiling(np.zeros_like(ppg), ecg, FS)


def test_paired_beat_difference_resamples_subjects_for_both_conditions():
  # 4 subjects x 2 windows, 10 true beats each; paired finds 8 (6 within 50 ms), control 3 (1)
  paired = np.tile([10, 8, 6], (8, 1))
  control = np.tile([10, 3, 1], (8, 1))
  groups = np.repeat(["a", "b", "c", "d"], 2)
  d = recon_metrics.paired_beat_difference(paired, control, groups, n_bootstrap=200, seed=0)
  assert d["subjects"] == 4
  assert d["sensitivity"]["value"] == pytest.approx(0.5)
  assert d["share_within_50ms"]["value"] == pytest.approx(0.5)
  assert d["sensitivity"]["ci95"] == pytest.approx([0.5, 0.5])  # every subject says the same
  # one subject where the control does better widens the interval on both sides of the value
  control[:2] = [10, 9, 9]
  d = recon_metrics.paired_beat_difference(paired, control, groups, n_bootstrap=200, seed=0)
  lo, hi = d["sensitivity"]["ci95"]
  assert lo < d["sensitivity"]["value"] < hi and lo < 0.5
