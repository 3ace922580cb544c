"""Readers on real and realistic files: every PhysioNet record, PulseDB v7.3 files, CSV/NPZ."""

from pathlib import Path

import numpy as np
import pytest

from xmae_jax.data import prepare as prep
from xmae_jax.data import shards
from xmae_jax.data import sources
from xmae_jax.data.sources import Missing
from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import pulsedb
from xmae_jax.data.sources import tabular
from xmae_jax.data.sources import wfdb as wfdb_source


def _read_all(module, unit, options=None):
  items = list(module.read(unit, options or {}))
  return (
      [i for i in items if isinstance(i, Recording)],
      [i for i in items if isinstance(i, Missing)],
  )


# ---------------------------------------------------------------------------------------------
# WFDB
# ---------------------------------------------------------------------------------------------
def test_wfdb_lists_top_level_records_only(physionet_dir):
  units = [
      Path(u).relative_to(physionet_dir).as_posix()
      for u in wfdb_source.list_inputs(str(physionet_dir), {})
  ]
  assert units == [
      "041s/041s",
      "a103l",
      "mixedsignals",
      "p000878/p000878-2137-10-26-16-57",
      "v102s",
  ]


def test_wfdb_skips_mimic_numerics_records(physionet_dir, tmp_path):
  import shutil

  shutil.copytree(physionet_dir / "p000878", tmp_path / "p000878")
  (tmp_path / "p000878" / "p000878-2137-10-26-16-57n.hea").write_text(
      "p000878-2137-10-26-16-57n 2 0.0166667 1757 16:57:00 26/10/2137\n"
      "p000878-2137-10-26-16-57n.dat 16 1 16 0 0 0 0 HR\n"
      "p000878-2137-10-26-16-57n.dat 16 1 16 0 0 0 0 SpO2\n"
  )
  units = wfdb_source.list_inputs(str(tmp_path), {})
  assert [Path(u).name for u in units] == ["p000878-2137-10-26-16-57"]


@pytest.mark.parametrize("name", ["a103l", "v102s"])
def test_wfdb_single_rate_records(physionet_dir, name):
  import wfdb

  recs, missing = _read_all(wfdb_source, str(physionet_dir / name))
  assert not missing and len(recs) == 1
  rec = recs[0]
  assert rec.subject_id == name
  raw = wfdb.rdrecord(str(physionet_dir / name))
  for m, channel in (("ecg", "II"), ("ppg", "PLETH")):
    x, fs = rec.signals[m]
    assert fs == 250.0
    np.testing.assert_allclose(x, raw.p_signal[:, raw.sig_name.index(channel)])


def test_wfdb_ecg_lead_preference_is_configurable(physionet_dir):
  import wfdb

  raw = wfdb.rdrecord(str(physionet_dir / "a103l"))
  recs, _ = _read_all(wfdb_source, str(physionet_dir / "a103l"), {"wfdb_ecg_leads": "v,ii"})
  np.testing.assert_allclose(recs[0].signals["ecg"][0], raw.p_signal[:, raw.sig_name.index("V")])


def test_wfdb_multi_rate_flac_record(physionet_dir):
  recs, missing = _read_all(wfdb_source, str(physionet_dir / "mixedsignals"))
  assert not missing and len(recs) == 1
  (ecg, fs_e), (ppg, fs_p) = recs[0].signals["ecg"], recs[0].signals["ppg"]
  assert fs_e == pytest.approx(4 * 62.4725) and fs_p == pytest.approx(2 * 62.4725)
  assert len(ecg) == 2 * len(ppg) == 57600  # 230 s at each own rate
  assert len(ecg) / fs_e == pytest.approx(len(ppg) / fs_p)
  assert np.nanstd(ecg) > 0 and np.nanstd(ppg) > 0


def test_wfdb_multi_segment_record_is_joined(physionet_dir):
  recs, missing = _read_all(wfdb_source, str(physionet_dir / "041s" / "041s"))
  assert not missing and len(recs) == 1
  ecg, fs = recs[0].signals["ecg"]
  ppg, fs_p = recs[0].signals["ppg"]
  assert len(ecg) / fs == pytest.approx(16.0) and len(ppg) / fs_p == pytest.approx(16.0)


def test_wfdb_arterial_pressure_is_an_extra_channel(physionet_dir):
  import wfdb

  recs, _ = _read_all(wfdb_source, str(physionet_dir / "mixedsignals"))
  abp, fs = recs[0].extra["abp"]
  raw = wfdb.rdrecord(
      str(physionet_dir / "mixedsignals"), channel_names=["ABP"], smooth_frames=False
  )
  assert fs == pytest.approx(2 * 62.4725)
  np.testing.assert_array_equal(abp, raw.e_p_signal[0])  # mmHg, as the header scales
  # --wfdb-abp-names: another name list, or none; the modalities are read alike either way
  for names in ("", "ART"):
    other, _ = _read_all(
        wfdb_source, str(physionet_dir / "mixedsignals"), {"wfdb_abp_names": names}
    )
    assert other[0].extra == {}
    for m, (x, f) in recs[0].signals.items():
      assert f == other[0].signals[m][1] and np.array_equal(
          x, other[0].signals[m][0], equal_nan=True
      )
  # a multi-segment record joins its segments' ABP like its modalities
  joined, _ = _read_all(wfdb_source, str(physionet_dir / "041s" / "041s"))
  abp, fs = joined[0].extra["abp"]
  assert fs == 125.0 and len(abp) == 2000 and np.isfinite(abp).all()


def test_wfdb_run_without_abp_in_one_segment_is_nan_there():
  seg = lambda n, abp: (
      {"ecg": (np.zeros(2 * n), 250.0), "ppg": (np.zeros(n), 125.0)},
      {"abp": (np.full(n, 90.0), 125.0)} if abp else {},
  )
  joined = wfdb_source.join_extra([seg(100, True), seg(50, False), seg(100, True)])
  x, fs = joined["abp"]
  assert fs == 125.0 and len(x) == 250
  assert np.isnan(x[100:150]).all() and (x[:100] == 90).all() and (x[150:] == 90).all()
  other_rate = [seg(100, True), ({"ecg": (np.zeros(200), 250.0)}, {"abp": (np.ones(10), 10.0)})]
  assert wfdb_source.join_extra(other_rate) == {}


def test_wfdb_mimic_matched_subset_layout_with_missing_segments(physionet_dir):
  master = physionet_dir / "p000878" / "p000878-2137-10-26-16-57"
  recs, missing = _read_all(wfdb_source, str(master))
  assert [r.subject_id for r in recs] == ["p000878", "p000878"]
  assert set(recs[0].signals) == {"ppg"}  # segment 0001: PLETH only
  assert set(recs[1].signals) == {"ecg", "ppg"}  # segment 0002: II + PLETH
  assert len(missing) == 30
  assert {Path(m.path).name for m in missing} == {f"3269321_{i:04d}.hea" for i in range(3, 33)}


def test_wfdb_every_shared_record_yields_segments(physionet_dir, tmp_path):
  report = prep.prepare_dataset(
      "wfdb", physionet_dir, tmp_path / "ds", workers=1, progress=False, log=None
  )
  assert report["files_read"] == 5 and not report["files_skipped"]
  kept = {f["file"]: f["kept"] for f in report["per_file"]}
  assert all(v >= 1 for v in kept.values()), kept
  assert kept["a103l"] == 33 and kept["v102s"] == 30
  assert len(report["files_missing"]) == 30
  assert report["segments_dropped"]["missing_ecg"] == 1  # the PLETH-only segment
  manifest = shards.read_manifest(tmp_path / "ds")
  ids = [s for e in manifest["splits"].values() for s in e["subject_ids"]]
  assert sorted(ids) == ["041s", "a103l", "mixedsignals", "p000878", "v102s"]
  assert "missing" in (tmp_path / "ds" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# PulseDB (MATLAB v7.3 files built with h5py the way MATLAB lays them out)
# ---------------------------------------------------------------------------------------------
def _matlab_struct_array(path: Path, windows: list[dict]):
  """Writes Subj_Wins as MATLAB 7.3 does: per field a (1, N) dataset of object references."""
  import h5py

  with h5py.File(path, "w") as f:
    refs = f.create_group("#refs#")
    g = f.create_group("Subj_Wins")
    g.attrs["MATLAB_class"] = np.bytes_("struct")
    counter = [0]

    def store(value):
      counter[0] += 1
      name = f"r{counter[0]}"
      if isinstance(value, str):
        ds = refs.create_dataset(name, data=np.array([[ord(c)] for c in value], np.uint16))
        ds.attrs["MATLAB_class"] = np.bytes_("char")
      else:
        arr = np.atleast_2d(np.asarray(value, np.float64))
        ds = refs.create_dataset(name, data=arr)  # (1, L): MATLAB L x 1
        ds.attrs["MATLAB_class"] = np.bytes_("double")
      return ds.ref

    for field in windows[0]:
      data = np.array([[store(w[field]) for w in windows]], dtype=h5py.ref_dtype)
      g.create_dataset(field, data=data)


def _pulsedb_windows(subject: str, n: int, seed: int):
  import neurokit2 as nk

  out = []
  for i in range(n):
    ecg = nk.ecg_simulate(
        duration=10, sampling_rate=125, heart_rate=60 + 5 * i, random_state=seed + i
    )
    ppg = nk.ppg_simulate(
        duration=10, sampling_rate=125, heart_rate=60 + 5 * i, random_state=seed + i
    )
    mm = lambda x: (x - x.min()) / (x.max() - x.min())  # PulseDB stores [0, 1] per window
    out.append(
        {
            "ECG_Raw": mm(ecg),
            "PPG_Raw": mm(ppg),
            "Age": 60.0 + seed,
            "Gender": "M",
            "BMI": 27.5,
            "Height": 175.0,
            "Weight": 84.0,
            "SegSBP": 120.0 + i,
            "SegDBP": 70.0 + i,
            "SubjectID": subject,
            "SegmentID": f"{subject}_{i:03d}",
        }
    )
  return out


def test_pulsedb_reads_matlab_v73_struct_arrays(tmp_path):
  d = tmp_path / "PulseDB_MIMIC"
  d.mkdir()
  _matlab_struct_array(d / "p000001.mat", _pulsedb_windows("p000001", 3, 0))
  recs, missing = _read_all(pulsedb, str(d / "p000001.mat"))
  assert not missing and len(recs) == 3
  for i, r in enumerate(recs):
    assert r.subject_id == "mimic_p000001"
    assert r.signals["ecg"][1] == 125.0 and r.signals["ecg"][0].shape == (1250,)
    assert r.meta == {
        "age": 60.0,
        "bmi": 27.5,
        "height": 175.0,
        "weight": 84.0,
        "sbp": 120.0 + i,
        "dbp": 70.0 + i,
        "sex": 1.0,
    }


def test_pulsedb_prepare_end_to_end(tmp_path):
  for folder, seed in (("PulseDB_MIMIC", 0), ("PulseDB_Vital", 10)):
    d = tmp_path / "in" / folder
    d.mkdir(parents=True)
    for k in range(2):
      sid = f"p{seed + k:06d}"
      _matlab_struct_array(d / f"{sid}.mat", _pulsedb_windows(sid, 2, seed + k))
  (tmp_path / "in" / "PulseDB_MIMIC" / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, no")
  report = prep.prepare_dataset(
      "pulsedb", tmp_path / "in", tmp_path / "ds", workers=1, progress=False, log=None
  )
  assert report["segments_kept"] == 8
  assert [f["file"] for f in report["files_skipped"]] == ["PulseDB_MIMIC/broken.mat"]
  assert report["files_skipped"][0]["reason"].startswith("unreadable")
  manifest = shards.read_manifest(tmp_path / "ds")
  ids = sorted(s for e in manifest["splits"].values() for s in e["subject_ids"])
  assert ids == ["mimic_p000000", "mimic_p000001", "vital_p000010", "vital_p000011"]
  only_mimic = pulsedb.list_inputs(str(tmp_path / "in"), {"pulsedb_exclude_vital": True})
  assert all("PulseDB_MIMIC" in f for f in only_mimic) and len(only_mimic) == 3


def test_pulsedb_missing_struct_or_field(tmp_path):
  import h5py

  with h5py.File(tmp_path / "x.mat", "w") as f:
    f.create_dataset("Other", data=np.zeros(3))
  with pytest.raises(SourceError, match="missing channel.*Subj_Wins"):
    list(pulsedb.read(str(tmp_path / "x.mat"), {}))
  wins = _pulsedb_windows("p1", 1, 0)
  del wins[0]["PPG_Raw"]
  _matlab_struct_array(tmp_path / "y.mat", wins)
  with pytest.raises(SourceError, match="missing channel.*PPG_Raw"):
    list(pulsedb.read(str(tmp_path / "y.mat"), {}))


# ---------------------------------------------------------------------------------------------
# CSV and NPZ
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signals():
  import neurokit2 as nk

  ecg = nk.ecg_simulate(duration=25, sampling_rate=200, heart_rate=65, random_state=4)
  ppg = nk.ppg_simulate(duration=25, sampling_rate=200, heart_rate=65, random_state=4)
  return ecg, ppg


def test_csv_one_subject_per_file_and_subject_column(tmp_path, signals):
  import pandas as pd

  ecg, ppg = signals
  pd.DataFrame({"ECG": ecg, "Pleth": ppg}).to_csv(tmp_path / "alice.csv", index=False)
  opts = {"format": "csv", "fs": 200.0, "ecg_column": "ecg", "ppg_column": "pleth"}
  recs, _ = _read_all(tabular, str(tmp_path / "alice.csv"), opts)
  assert len(recs) == 1 and recs[0].subject_id == "alice"
  np.testing.assert_allclose(recs[0].signals["ecg"][0], ecg)
  half = len(ecg) // 2
  pd.DataFrame(
      {
          "who": ["a"] * half + ["b"] * (len(ecg) - half),
          "ecg": ecg,
          "ppg": ppg,
          "t": np.arange(len(ecg)) / 200.0,
      }
  ).to_csv(tmp_path / "two.csv", index=False)
  recs, _ = _read_all(
      tabular,
      str(tmp_path / "two.csv"),
      {"format": "csv", "subject_column": "who", "time_column": "t"},
  )
  assert [r.subject_id for r in recs] == ["a", "b"]
  assert recs[0].signals["ppg"][1] == pytest.approx(200.0)  # inferred from the time column
  with pytest.raises(SourceError, match="unknown sampling rate"):
    list(tabular.read(str(tmp_path / "alice.csv"), {"format": "csv", "ppg_column": "pleth"}))
  with pytest.raises(SourceError, match="missing channel"):
    list(
        tabular.read(
            str(tmp_path / "alice.csv"),
            {"format": "csv", "fs": 200.0, "ecg_column": "x", "ppg_column": "y"},
        )
    )


def test_npz_rows_and_prepare(tmp_path, signals):
  ecg, ppg = signals
  rows = np.stack([ecg[:2400], ecg[2400:4800]])
  prow = np.stack([ppg[:2400], ppg[2400:4800]])
  np.savez(tmp_path / "batch.npz", ecg=rows, ppg=prow, fs=200.0, subject=np.array(["x", "y"]))
  recs, _ = _read_all(
      tabular, str(tmp_path / "batch.npz"), {"format": "npz", "subject_column": "subject"}
  )
  assert [r.subject_id for r in recs] == ["x", "y"]
  assert recs[1].signals["ppg"][0].shape == (2400,) and recs[1].signals["ppg"][1] == 200.0
  report = prep.prepare_dataset(
      "npz",
      tmp_path,
      tmp_path / "ds",
      progress=False,
      log=None,
      source_options={"subject_column": "subject"},
  )
  assert report["segments_kept"] == 2 and report["subjects_per_split"]["train"] == 2


def test_registry():
  assert sources.get("csv") is sources.get("npz") is tabular
  with pytest.raises(SourceError, match="unknown source"):
    sources.get("gdf")
