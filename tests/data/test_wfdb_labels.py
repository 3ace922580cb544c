"""Per-window labels and meta from real records: WFDB header comments -> labels (Challenge 2015
alarm_type / alarm_true, alarm_time_s -> seconds_to_alarm), hr from the ECG R-peaks, sbp/dbp
from an arterial pressure channel (NaN per counted reason), window_start_s; carried through
xmae-prepare into records and the report."""

import json
import math

import numpy as np
import pytest

from xmae_jax.data import dataset_reader
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_report
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import synthetic as synthetic_source
from xmae_jax.data.sources import wfdb as wfdb_source

FS = 250.0
CONFIG = pp.PreprocessConfig()


def _recording(path) -> Recording:
  items = [i for i in wfdb_source.read(str(path), {}) if isinstance(i, Recording)]
  assert len(items) == 1
  return items[0]


def _segments(item, config=CONFIG, fn=pp.segment_recording):
  return fn(
      item.signals,
      config,
      meta=item.meta,
      labels=item.labels,
      events=item.events,
      series=item.series,
      extra=item.extra,
  )


# ---------------------------------------------------------------------------------------------
# Header comments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,alarm", [("a103l", "Asystole"), ("v102s", "Ventricular_Tachycardia")]
)
def test_challenge_header_comments_become_labels(physionet_dir, name, alarm):
  item = _recording(physionet_dir / name)
  assert item.labels == {"alarm_type": alarm, "alarm_true": 0}
  assert item.meta == {"alarm_time_s": 300.0}
  segs, _ = _segments(item)
  assert segs and all(s.labels == item.labels for s in segs)
  assert all(s.meta["alarm_time_s"] == 300.0 for s in segs)


def test_header_annotations_generic_and_partial():
  labels, meta = wfdb_source.header_annotations(["Tachycardia"])  # no verdict line
  assert labels == {"alarm_type": "Tachycardia"} and meta == {"alarm_time_s": 300.0}
  labels, meta = wfdb_source.header_annotations(
      [
          "Location: micu",
          "<age>: 74",
          "Weight kg: 81.5",
          "true ALARM",
          "Produced by xform from record mimicdb/041/04100002, beginning at 0:0",
          "free text",
      ]
  )
  assert labels == {"location": "micu", "age": 74, "weight_kg": 81.5, "alarm_true": 1}
  assert meta == {}


def test_master_header_comment_labels_every_recording_of_a_multi_segment_record(physionet_dir):
  units = [u for u in wfdb_source.list_inputs(str(physionet_dir / "p000878"), {})]
  items = [i for u in units for i in wfdb_source.read(u, {}) if isinstance(i, Recording)]
  assert items and all(i.labels == {"location": "micu"} for i in items)


# ---------------------------------------------------------------------------------------------
# Window times
# ---------------------------------------------------------------------------------------------
def test_window_start_and_seconds_to_alarm(physionet_dir):
  item = _recording(physionet_dir / "a103l")  # 330 s: windows past the alarm
  segs, _ = _segments(item)
  for s in segs:
    assert s.meta["window_start_s"] == s.start_s
    assert s.meta["seconds_to_alarm"] == 300.0 - (s.start_s + 10.0)
  last = max(segs, key=lambda s: s.start_s)
  assert last.start_s == 320.0 and last.meta["seconds_to_alarm"] == -30.0
  assert any(s.meta["seconds_to_alarm"] == 0.0 for s in segs)  # the window ending at 300 s


# ---------------------------------------------------------------------------------------------
# Heart rate
# ---------------------------------------------------------------------------------------------
def _spike_ecg(bpm: float, seconds: float, fs: float = FS) -> np.ndarray:
  """Narrow R waves at an exact period, a T wave after each, some noise."""
  t = np.arange(int(seconds * fs)) / fs
  x = np.zeros_like(t)
  for r in np.arange(0.3, seconds, 60.0 / bpm):
    x += np.exp(-0.5 * ((t - r) / 0.012) ** 2) + 0.2 * np.exp(-0.5 * ((t - r - 0.25) / 0.05) ** 2)
  return x + 0.01 * np.random.default_rng(0).normal(size=len(t))


def _pulse_ppg(bpm: float, seconds: float, fs: float = FS) -> np.ndarray:
  t = np.arange(int(seconds * fs)) / fs
  return np.sin(np.pi * bpm / 60 * t) ** 6


@pytest.mark.parametrize("bpm", [50.0, 75.0, 150.0])
def test_hr_of_an_ecg_with_a_known_rate(bpm):
  ecg = _spike_ecg(bpm, 30)
  segs, stats = pp.segment_recording({"ecg": (ecg, FS), "ppg": (_pulse_ppg(bpm, 30), FS)}, CONFIG)
  assert len(segs) == 3 and stats["derived/hr"] == 3
  # every R-R interval is 60 / bpm s, to the sample (the period is a whole number of samples)
  for s in segs:
    assert s.meta["hr"] == pytest.approx(bpm, abs=1e-9)


def test_hr_too_few_beats_and_flat_ecg_are_nan_with_reasons():
  ecg = _spike_ecg(75.0, 30)
  ecg[int(10 * FS) + 5 : int(20 * FS) - 5] = 0.01 * np.sin(np.arange(int(10 * FS) - 10))  # no QRS
  segs, stats = pp.segment_recording({"ecg": (ecg, FS)}, pp.PreprocessConfig(modalities="ecg"))
  hrs = {s.index: s.meta["hr"] for s in segs}
  assert hrs[0] == pytest.approx(75.0) and hrs[2] == pytest.approx(75.0)
  assert math.isnan(hrs[1])
  assert stats["derived/hr"] == 2
  assert sum(v for k, v in stats.items() if k.startswith("derived_nan/hr/")) == 1
  assert pp.heart_rate_from_peaks(np.array([0, 250]), FS) == (
      pytest.approx(math.nan, nan_ok=True),
      "too_few_beats",
  )
  assert pp.heart_rate_from_peaks(np.array([0, 20, 40, 60]), FS)[1] == "implausible"  # 750 bpm


def test_hr_is_the_same_from_the_ecg_modality_and_from_ecg_as_an_extra_channel(physionet_dir):
  # xmae-embed with a PPG encoder windows the PPG only; the ECG still gives hr
  item = _recording(physionet_dir / "a103l")
  both = [s.meta["hr"] for s in _segments(item)[0]]
  [ppg_only] = list(
      prepare_units.segment_unit(
          "wfdb",
          str(physionet_dir / "a103l"),
          {},
          pp.PreprocessConfig(modalities="ppg"),
          modalities=("ppg",),
      )
  )
  assert set(ppg_only.segments[0].signals) == {"ppg"}
  assert [s.meta["hr"] for s in ppg_only.segments] == both
  assert len(both) > 20 and all(40 < h < 200 for h in both)


def test_batched_and_per_window_paths_give_the_same_meta(physionet_dir):
  for name in ("a103l", "mixedsignals"):
    item = _recording(physionet_dir / name)
    fast, fast_stats = _segments(item)
    slow, slow_stats = _segments(item, fn=pp.segment_recording_unbatched)
    assert fast_stats == slow_stats
    assert [s.meta for s in fast] == [s.meta for s in slow]
    assert "hr" in fast[0].meta


def test_simulator_hr_is_kept_as_the_source_gives_it():
  options = {"seed": 3, "minutes_per_subject": 0.5}
  [item] = list(synthetic_source.read("syn00001", options))
  segs, stats = _segments(item)
  times, values = item.series["hr"]
  assert segs and not any(k.startswith("derived/hr") for k in stats)
  for s in segs:
    inside = (times >= s.start_s) & (times < s.start_s + 10.0)
    assert s.meta["hr"] == float(np.mean(values[inside]))
    assert s.meta["window_start_s"] == s.start_s


# ---------------------------------------------------------------------------------------------
# Blood pressure
# ---------------------------------------------------------------------------------------------
def test_sbp_dbp_on_mixedsignals_against_peaks_found_by_hand(physionet_dir):
  import wfdb
  from scipy import signal

  item = _recording(physionet_dir / "mixedsignals")
  assert set(item.extra) == {"abp"}
  segs, stats = _segments(item)
  assert stats["derived/sbp_dbp"] == len(segs) > 10
  rec = wfdb.rdrecord(
      str(physionet_dir / "mixedsignals"), channel_names=["ABP"], smooth_frames=False
  )
  abp = np.asarray(rec.e_p_signal[0], float)
  fs = rec.fs * rec.samps_per_frame[0]
  for s in (segs[0], segs[len(segs) // 2]):
    a = int(round(s.start_s * fs))
    w = abp[a : a + int(round(10 * fs))]
    # systolic peaks above the window's mean at least 0.4 s apart; troughs likewise below it
    top, _ = signal.find_peaks(w, height=w.mean(), distance=int(0.4 * fs))
    low, _ = signal.find_peaks(-w, height=-w.mean(), distance=int(0.4 * fs))
    assert len(top) >= 8 and len(low) >= 8
    assert s.meta["sbp"] == pytest.approx(np.median(w[top]), abs=2.0)
    assert s.meta["dbp"] == pytest.approx(np.median(w[low]), abs=2.0)
    assert 60 < s.meta["dbp"] < s.meta["sbp"] < 250


def _abp(seconds: float, sbp: float, dbp: float, bpm: float = 75.0, fs: float = FS):
  """A pulse from dbp to exactly sbp every 60/bpm s (a whole number of samples)."""
  phase = (np.arange(int(seconds * fs)) / fs * bpm / 60.0) % 1.0
  return dbp + (sbp - dbp) * (0.5 - 0.5 * np.cos(2 * np.pi * phase)) ** 3


def _abp_cases() -> np.ndarray:
  """Six 10-s windows: good, damped, flat, NaN, implausible, good."""
  return np.concatenate(
      [
          _abp(10, 120, 80),
          _abp(10, 93, 87),
          np.full(int(10 * FS), 90.0),
          np.full(int(10 * FS), np.nan),
          _abp(10, 360, 250),
          _abp(10, 140, 70),
      ]
  )


def test_sbp_dbp_nan_reasons_are_counted():
  ecg, ppg = _spike_ecg(75.0, 60), _pulse_ppg(75.0, 60)
  segs, stats = pp.segment_recording(
      {"ecg": (ecg, FS), "ppg": (ppg, FS)}, CONFIG, extra={"abp": (_abp_cases(), FS)}
  )
  assert [s.start_s for s in segs] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]  # windows unchanged
  bp = [(s.meta["sbp"], s.meta["dbp"]) for s in segs]
  assert bp[0] == pytest.approx((120.0, 80.0)) and bp[5] == pytest.approx((140.0, 70.0))
  assert all(math.isnan(v) for pair in bp[1:5] for v in pair)
  assert {k: v for k, v in stats.items() if "sbp_dbp" in k} == {
      "derived/sbp_dbp": 2,
      "derived_nan/sbp_dbp/damped": 1,
      "derived_nan/sbp_dbp/flat_line": 1,
      "derived_nan/sbp_dbp/nan_run": 1,
      "derived_nan/sbp_dbp/implausible": 1,
  }
  # the extra channel changes nothing else
  plain, plain_stats = pp.segment_recording({"ecg": (ecg, FS), "ppg": (ppg, FS)}, CONFIG)
  for a, b in zip(plain, segs):
    assert all(np.array_equal(a.signals[m], b.signals[m]) for m in a.signals)
    assert a.quality == b.quality
  assert {k: v for k, v in stats.items() if "sbp_dbp" not in k} == dict(plain_stats)


def test_blood_pressure_bounds():
  assert pp.blood_pressure(_abp(10, 120, 80, bpm=15), FS)[2] == "too_few_beats"  # 2.5 beats
  assert pp.blood_pressure(_abp(10, 35, 20), FS)[2] == "implausible"
  sbp, dbp, why = pp.blood_pressure(_abp(10, 180, 95, bpm=110), FS)
  assert why is None and (sbp, dbp) == pytest.approx((180.0, 95.0), abs=0.5)


# ---------------------------------------------------------------------------------------------
# Through xmae-prepare
# ---------------------------------------------------------------------------------------------
def _write_record(directory, name, signals: dict, comments):
  import wfdb

  names = list(signals)
  wfdb.wrsamp(
      name,
      fs=FS,
      units=["mmHg" if n == "ABP" else "mV" for n in names],
      sig_name=names,
      p_signal=np.stack([signals[n] for n in names], axis=1),
      fmt=["16"] * len(names),
      comments=comments,
      write_dir=str(directory),
  )


def test_prepare_carries_labels_and_pressures_and_reports_them(tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  ecg, ppg = _spike_ecg(75.0, 60), _pulse_ppg(75.0, 60)
  _write_record(
      src, "b001l", {"II": ecg, "PLETH": ppg, "ABP": _abp_cases()}, ["Bradycardia", "True alarm"]
  )
  _write_record(src, "t002s", {"II": ecg, "PLETH": ppg}, ["Tachycardia"])
  _write_record(src, "noppg", {"II": ecg, "ABP": _abp_cases()}, ["Asystole", "False alarm"])
  out = tmp_path / "ds"
  report = prep.prepare_dataset("wfdb", src, out, progress=False, log=None)
  # a record without PLETH is read, its windows dropped and the file named in the report
  assert report["files_read"] == 3 and report["segments_dropped"] == {"missing_ppg": 6}
  assert [(w["input"], w["warning"].split(":")[0]) for w in report["input_warnings"]] == [
      ("noppg", "missing channel")
  ]
  assert report["derived_meta"]["sbp_dbp"] == {
      "windows": 2,
      "nan_total": 4,
      "nan": {"damped": 1, "flat_line": 1, "implausible": 1, "nan_run": 1},
  }
  assert report["derived_meta"]["hr"] == {"windows": 12, "nan": {}, "nan_total": 0}
  assert report["label_windows"] == {
      "alarm_type": {"Bradycardia": 6, "Tachycardia": 6},
      "alarm_true": {"1": 6},
  }
  assert (
      json.loads((out / prepare_report.REPORT_JSON).read_text())["derived_meta"]
      == report["derived_meta"]
  )
  md = (out / prepare_report.REPORT_MD).read_text()
  assert (
      "- sbp_dbp: 2 windows with a value, 4 NaN (damped 1, flat_line 1, implausible 1, "
      "nan_run 1)"
  ) in md
  assert "- alarm_type: Bradycardia 6, Tachycardia 6" in md
  records = {r.segment_id: r for _, r in dataset_reader.iter_records(str(out), "train")}
  assert len(records) == 12
  b = records["in/b001l:00000"]
  assert b.labels == {"alarm_type": "Bradycardia", "alarm_true": 1}
  assert b.meta["sbp"] == pytest.approx(120.0, abs=0.1)
  assert b.meta["seconds_to_alarm"] == 290.0 and b.meta["window_start_s"] == 0.0
  assert "sbp" not in records["in/b001l:00001"].meta  # NaN is left out of a record
  t = records["in/t002s:00003"]
  assert t.labels == {"alarm_type": "Tachycardia"} and "sbp" not in t.meta
  assert t.meta["hr"] == pytest.approx(75.0)
