"""The EDF/EDF+ reader on files written here with pyedflib: channel selection by label, each
channel at its own rate (ECG 256 Hz, PPG 128 Hz) resampled by the preprocessing, through
`xmae-prepare --source edf`; unusable files are one line naming them."""

import json

import numpy as np
import pytest

pyedflib = pytest.importorskip("pyedflib")

from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import dataset_reader
from xmae_jax.data import sources
from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import edf

SECONDS = 32
ECG_FS, PPG_FS = 256, 128


@pytest.fixture(scope="module")
def waves():
  """(ecg at 256 Hz, ppg at 128 Hz, eeg-like noise at 128 Hz) of one heart rate (70 bpm)."""
  import neurokit2 as nk

  ecg = nk.ecg_simulate(duration=SECONDS, sampling_rate=ECG_FS, heart_rate=70, random_state=1)
  ppg = nk.ppg_simulate(duration=SECONDS, sampling_rate=PPG_FS, heart_rate=70, random_state=1)
  eeg = np.random.default_rng(0).normal(0, 20, SECONDS * PPG_FS)
  return ecg, ppg, eeg


def write_edf(path, channels, patient="X"):
  """An EDF+ file of {label: (samples, fs)}."""
  from pyedflib import highlevel

  headers, data = [], []
  for label, (x, fs) in channels.items():
    lo, hi = float(np.floor(np.min(x))) - 1, float(np.ceil(np.max(x))) + 1  # 8 characters
    headers.append(
        highlevel.make_signal_header(
            label, dimension="uV", sample_frequency=fs, physical_min=lo, physical_max=hi
        )
    )
    data.append(np.asarray(x, np.float64))
  header = highlevel.make_header(patientcode=patient)
  assert highlevel.write_edf(str(path), data, headers, header)
  return path


def test_channels_by_name_at_their_own_rates(tmp_path, waves):
  ecg, ppg, eeg = waves
  path = write_edf(
      tmp_path / "night1.edf",
      {"EEG Fpz-Cz": (eeg, PPG_FS), " ecg ": (ecg, ECG_FS), "Pleth": (ppg, PPG_FS)},
      patient="P07",
  )
  (rec,) = edf.read(str(path), {})
  assert isinstance(rec, Recording) and rec.subject_id == "night1" and rec.name == "night1"
  assert {m: fs for m, (_, fs) in rec.signals.items()} == {"ecg": ECG_FS, "ppg": PPG_FS}
  # physical values survive the 16-bit digitisation to well under 0.1 % of the range
  np.testing.assert_allclose(rec.signals["ecg"][0], ecg, atol=1e-3 * np.ptp(ecg))
  np.testing.assert_allclose(rec.signals["ppg"][0], ppg, atol=1e-3 * np.ptp(ppg))
  assert rec.meta == {"ecg_channel": "ecg", "ppg_channel": "Pleth"}
  (rec,) = edf.read(str(path), {"edf_subject": "patient"})
  assert rec.subject_id == "P07"
  # another name list picks another channel; the first listed name the file has wins
  (rec,) = edf.read(str(path), {"edf_ppg_names": "EEG FPZ-CZ,Pleth", "edf_ecg_names": "none"})
  assert set(rec.signals) == {"ppg"} and rec.signals["ppg"][0].std() > 5


def test_prepare_source_edf_end_to_end(tmp_path, waves):
  ecg, ppg, eeg = waves
  folder = tmp_path / "edf"
  folder.mkdir()
  for k in range(2):
    write_edf(
        folder / f"rec{k}.edf",
        {"ECG II": (ecg, ECG_FS), "Finger PPG": (ppg, PPG_FS), "EEG": (eeg, PPG_FS)},
    )
  (folder / "notes.txt").write_text("not a recording")
  out = tmp_path / "ds"
  assert (
      cli.main(
          [
              "--source",
              "edf",
              "--input",
              str(folder),
              "--output",
              str(out),
              "--edf-ppg-names",
              "finger ppg",
              "--workers",
              "1",
              "--no-progress",
              "--test-frac",
              "0",
              "--val-frac",
              "0",
          ]
      )
      == 0
  )
  report = json.loads((out / "report.json").read_text())
  assert report["files_read"] == 2 and report["segments_kept"] == 2 * (SECONDS // 10)
  records = [
      r for _, r in dataset_reader.iter_records(str(out), "train", modalities=("ppg", "ecg"))
  ]
  assert len(records) == 6 and {r.subject_id for r in records} == {"rec0", "rec1"}
  for r in records:  # both resampled to the 100 Hz contract, 10-s windows
    assert r.ppg.shape == r.ecg.shape == (1000,)
    assert r.meta["ppg_channel"] == "Finger PPG"
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["source_options"]["edf_ppg_names"] == "finger ppg"


def test_unusable_edf_inputs_are_one_line(tmp_path, waves, capsys):
  ecg, _, eeg = waves
  write_edf(tmp_path / "eeg_only.edf", {"EEG": (eeg, PPG_FS)})
  with pytest.raises(
      SourceError,
      match=r"missing channel: .*eeg_only.edf: no ECG or PPG channel " r"\(channels: EEG;",
  ):
    list(edf.read(str(tmp_path / "eeg_only.edf"), {}))
  (tmp_path / "broken.edf").write_bytes(b"0       not an edf header")
  with pytest.raises(SourceError, match="unreadable: .*broken.edf"):
    list(edf.read(str(tmp_path / "broken.edf"), {}))
  (tmp_path / "empty").mkdir()
  with pytest.raises(SourceError, match="empty input: no .edf or .bdf files"):
    edf.list_inputs(str(tmp_path / "empty"), {})
  assert (
      cli.main(
          [
              "--source",
              "edf",
              "--input",
              str(tmp_path / "eeg_only.edf"),
              "--output",
              str(tmp_path / "ds"),
              "--no-progress",
          ]
      )
      == 1
  )
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "eeg_only.edf" in err and "no ECG or PPG channel" in err
  assert sources.get("edf") is edf


def test_xmae_embed_reads_an_edf_file_with_labels(tmp_path, waves):
  from xmae_jax.evaluation import embed as embed_lib
  from xmae_jax.evaluation import encoder as encoder_lib

  ecg, ppg, _ = waves
  path = write_edf(tmp_path / "night.edf", {"ECG": (ecg, ECG_FS), "PPG": (ppg, PPG_FS)})
  (tmp_path / "labels.csv").write_text("record,apnea\nnight,1\n")
  assert embed_lib.detect_source(path) == "edf"
  segs = embed_lib.read_segments(
      path,
      ("ppg", "ecg"),
      contract=encoder_lib.Contract(),
      options={"labels": str(tmp_path / "labels.csv")},
  )
  assert len(segs) == SECONDS // 10 and segs.signals["ppg"].shape == (3, 1000)
  assert [m["start_s"] for m in segs.meta] == [0.0, 10.0, 20.0]
  assert all(lab == {"apnea": 1} for lab in segs.labels)
