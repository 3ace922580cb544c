"""A labels file joined to the user's own recordings (xmae_jax.data.labels): by record id or by
subject id, through xmae-prepare into every window's record labels; bad or unmatched files are
one line naming them."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import dataset_reader
from xmae_jax.data import labels as labels_lib
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess as pp

FS = 125


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
  """A folder of three 25-s CSV recordings (ecg, ppg at 125 Hz): a.csv, b.csv, c.csv."""
  import neurokit2 as nk

  folder = tmp_path_factory.mktemp("csv")
  for k, name in enumerate("abc"):
    hr = 60 + 15 * k
    pd.DataFrame(
        {
            "ecg": nk.ecg_simulate(
                duration=25, sampling_rate=FS, heart_rate=hr, random_state=k, method="simple"
            ),
            "ppg": nk.ppg_simulate(duration=25, sampling_rate=FS, heart_rate=hr, random_state=k),
        }
    ).to_csv(folder / f"{name}.csv", index=False)
  return folder


def _labels_of(out):
  """{segment id: labels} of every record of the dataset `out`."""
  splits = json.loads((out / "manifest.json").read_text())["splits"]
  return {
      r.segment_id: r.labels
      for split, entry in splits.items()
      if entry["records"]
      for _, r in dataset_reader.iter_records(str(out), split, modalities=("ppg",))
  }


def _prepare(recordings, out, *extra):
  return cli.main(
      [
          "--source",
          "csv",
          "--input",
          str(recordings),
          "--output",
          str(out),
          "--fs",
          str(FS),
          "--workers",
          "1",
          "--no-progress",
          *extra,
      ]
  )


def test_labels_by_record_reach_every_window(recordings, tmp_path):
  labels = tmp_path / "labels.csv"
  # ids as text ("007" stays "007"), an empty cell, numbers and words; c has no row
  labels.write_text("Record,af,age,note\na,1,63,\nb,0,41.5,paroxysmal\n007,1,20,x\n")
  out = tmp_path / "ds"
  assert (
      _prepare(recordings, out, "--labels", str(labels), "--test-frac", "0", "--val-frac", "0") == 0
  )
  by_record = {}
  for segment_id, lab in _labels_of(out).items():
    by_record.setdefault(segment_id.split(":")[0], []).append(lab)
  assert set(by_record) == {"a", "b", "c"} and all(len(v) == 2 for v in by_record.values())
  assert all(lab == {"af": 1, "age": 63} for lab in by_record["a"])
  assert all(lab == {"af": 0, "age": 41.5, "note": "paroxysmal"} for lab in by_record["b"])
  assert all(lab == {} for lab in by_record["c"])
  report = json.loads((out / "report.json").read_text())
  assert report["labels_joined"] == {"recordings_matched": 2, "recordings_unmatched": 1}
  assert report["label_windows"]["af"] == {"0": 2, "1": 2}
  assert "recordings matched: 2" in (out / "report.md").read_text()
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["source_options"]["labels_sha256"] == labels_lib.load(labels).digest


def test_labels_by_subject_and_a_changed_file_is_another_request(recordings, tmp_path):
  labels = tmp_path / "subjects.csv"
  labels.write_text("subject_id,record,group\nb,zzz,treated\nc,yyy,control\n")
  out = tmp_path / "ds"
  # the file has both key columns: --labels-by subject chooses (by record nothing would match)
  assert _prepare(recordings, out, "--labels", str(labels), "--labels-by", "subject") == 0
  groups = {sid.split(":")[0]: lab.get("group") for sid, lab in _labels_of(out).items()}
  assert groups == {"a": None, "b": "treated", "c": "control"}
  labels.write_text("subject_id,group\nb,control\nc,treated\n")
  assert _prepare(recordings, out, "--labels", str(labels)) == 1  # another request
  assert _prepare(recordings, out, "--labels", str(labels), "--overwrite") == 0
  groups = {sid.split(":")[0]: lab.get("group") for sid, lab in _labels_of(out).items()}
  assert groups == {"a": None, "b": "control", "c": "treated"}


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "record,af\nx,1\ny,0\n",
            r"labels file \S+labels.csv matches none of the 3 recordings by record "
            r"\(its record: x, y; the recordings': a, b, c\); no dataset written",
        ),
        (
            "name,af\na,1\n",
            r"labels file \S+labels.csv has no record or subject column \(record, "
            r"record_id, subject or subject_id; has: name, af\)",
        ),
        ("record,af\na,1\na,0\n", r"labels file \S+labels.csv: record 'a' is on more than one row"),
        ("record\na\n", r"labels file \S+labels.csv has no label column besides record"),
        ("record,x:y\na,1\n", r"column name 'x:y' cannot name a task"),
    ],
)
def test_bad_or_unmatched_labels_file_is_one_line(recordings, tmp_path, capsys, text, message):
  labels = tmp_path / "labels.csv"
  labels.write_text(text)
  out = tmp_path / "ds"
  assert _prepare(recordings, out, "--labels", str(labels)) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("xmae-prepare: error: ")
  assert re.search(message, err), err
  assert not (out / "manifest.json").exists()


def test_missing_labels_file_and_labels_by_alone(recordings, tmp_path, capsys):
  assert _prepare(recordings, tmp_path / "ds", "--labels", str(tmp_path / "nope.csv")) == 1
  assert "labels file " in capsys.readouterr().err
  with pytest.raises(labels_lib.LabelsError, match="--labels-by needs --labels"):
    prep.prepare_dataset(
        "csv",
        recordings,
        tmp_path / "ds2",
        progress=False,
        log=None,
        source_options={"fs": FS, "labels_by": "subject"},
    )


def test_record_ids_of_a_recording():
  assert labels_lib.record_ids("walk1", "/d/walk1.csv") == ["walk1"]
  assert labels_lib.record_ids("walk1/0001", "/d/walk1.CSV") == ["walk1/0001", "walk1"]
  assert labels_lib.record_ids("p01/rec/rec_0001", "/d/p01/rec") == ["p01/rec/rec_0001", "rec"]


def test_wfdb_and_npz_recordings_take_labels_by_record_name(physionet_dir, tmp_path, recordings):
  labels = tmp_path / "labels.csv"
  # a103l's header says alarm_true 0 (False alarm): the user's file wins; a new column joins
  labels.write_text("record,alarm_true,site\na103l,1,icu\nbatch/00001,0,home\n")
  options = {"labels": str(labels)}
  (rec,) = prepare_units.segment_unit(
      "wfdb", str(physionet_dir / "a103l"), options, pp.PreprocessConfig()
  )
  assert rec.item.labels == {"alarm_type": "Asystole", "alarm_true": 1, "site": "icu"}
  assert rec.segments and all(s.labels == rec.item.labels for s in rec.segments)
  assert rec.stats["labels/matched"] == 1
  ppg = pd.read_csv(recordings / "a.csv")["ppg"].to_numpy()
  np.savez(tmp_path / "batch.npz", ppg=np.stack([ppg, ppg]), fs=float(FS))
  out = list(
      prepare_units.segment_unit(
          "npz",
          str(tmp_path / "batch.npz"),
          {**options, "format": "npz"},
          pp.PreprocessConfig(modalities="ppg"),
      )
  )
  assert [r.item.labels for r in out] == [{}, {"alarm_true": 0, "site": "home"}]
  assert [r.stats.get("labels/unmatched", 0) for r in out] == [1, 0]
