"""xmae-prepare end to end: layout, split, determinism, resume, bad input, command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_rules
from xmae_jax.data import prepare_split
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

SMALL = {"num_subjects": 5, "minutes_per_subject": 0.5}


def _synthetic(out, seed=77, workers=1, **kw):
  return prep.prepare_dataset(
      "synthetic",
      None,
      out,
      workers=workers,
      seed=seed,
      source_options={**SMALL, **kw},
      progress=False,
      log=None,
  )


def _records(out, split):
  from array_record.python import array_record_module as arm

  paths, index = shards.split_paths(out, split)
  recs = []
  for p in paths:
    r = arm.ArrayRecordReader(p)
    recs += [record_lib.decode(b) for b in r.read_all()]
    r.close()
  return recs, index


def _files(out):
  return {
      p.name: p.read_bytes()
      for p in Path(out).iterdir()
      if p.suffix in (".array_record", ".npz") or p.name == shards.MANIFEST
  }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo") / "ds"
  return out, _synthetic(out)


def test_dataset_directory_follows_the_shard_format(demo):
  out, report = demo
  manifest = shards.read_manifest(out)
  assert manifest["sampling_rate"] == 100 and manifest["segment_length"] == 1000
  assert manifest["preprocessing"]["ecg_clean_method"] == "neurokit"
  assert manifest["preprocessing"]["quality_percentile"] == 15.0
  assert manifest["source"] == "synthetic" and manifest["package_version"]
  assert len(manifest["sources"]) == 5
  total, seen_subjects = 0, {}
  for split in shards.SPLITS:
    recs, index = _records(out, split)
    assert len(recs) == manifest["splits"][split]["records"] == report["records_per_split"][split]
    total += len(recs)
    for r, q in zip(recs, index["quality_ppg"]):
      assert r.ppg.shape == r.ecg.shape == (1000,)
      assert -1.0 <= r.ppg.min() and r.ppg.max() <= 1.0
      assert r.quality_ppg == pytest.approx(float(q), abs=1e-6)
      assert {"age", "sex", "bmi", "sbp", "dbp", "hr", "ptt_ms"} <= set(r.meta)
      assert set(r.labels) == {"pvc", "motion"}
      seen_subjects.setdefault(r.subject_id, set()).add(split)
  assert total == report["segments_kept"] == 5 * 3
  assert all(len(s) == 1 for s in seen_subjects.values())  # no subject in two splits
  assert report["subjects_per_split"] == {"train": 3, "validation": 1, "test": 1}
  text = (out / "report.md").read_text()
  assert "segments kept: 15" in text
  assert json.loads((out / "report.json").read_text())["segments_kept"] == 15


def test_split_is_disjoint_deterministic_and_sized():
  subjects = [f"s{i:03d}" for i in range(100)]
  a = prepare_split.split_subjects(subjects, 77)
  assert a == prepare_split.split_subjects(reversed(subjects), 77)
  assert a != prepare_split.split_subjects(subjects, 78)
  counts = {s: sum(v == s for v in a.values()) for s in shards.SPLITS}
  assert counts == {"train": 90, "validation": 5, "test": 5}  # 5%, then 5% of the rest
  assert set(a) == set(subjects)
  tiny = prepare_split.split_subjects(["a", "b", "c"], 0)
  assert sorted(tiny.values()) == ["test", "train", "validation"]
  assert set(prepare_split.split_subjects(["a", "b"], 0).values()) == {"train"}
  split = prepare_split.split_subjects(subjects, 1, test_frac=0, val_frac=0)
  assert set(split.values()) == {"train"}
  with pytest.raises(prepare_rules.PrepareError, match="test_frac"):
    prepare_split.split_subjects(subjects, 0, test_frac=1.5)


def test_same_seed_gives_identical_shards_across_worker_counts(demo, tmp_path):
  out, _ = demo
  again = tmp_path / "again"
  _synthetic(again, workers=2)
  assert _files(again) == _files(out)
  other = tmp_path / "other"
  _synthetic(other, seed=78)
  assert _files(other)["train-index.npz"] != _files(out)["train-index.npz"]


def test_resume_reuses_finished_inputs_and_gives_the_same_output(demo, tmp_path):
  out, _ = demo
  ds = tmp_path / "ds"
  first = _synthetic(ds)
  assert first["resumed_units"] == 0
  caches = sorted((ds / prepare_rules.WORK).glob("*/*.msgpack"))
  assert len(caches) == 5
  caches[2].unlink()  # as if the run had stopped before that input
  (ds / shards.MANIFEST).unlink()
  second = _synthetic(ds)
  assert second["resumed_units"] == 4
  assert _files(ds) == _files(out)


def _write_bad_inputs(d: Path, physionet: Path):
  """A directory of WFDB records, one per kind of bad input, next to two good ones."""
  import shutil

  for name in ("a103l.hea", "a103l.mat", "v102s.hea", "v102s.dat"):
    shutil.copy(physionet / name, d / name)
  # truncated: the header promises 300 s, the file holds 40
  (d / "trunc.dat").write_bytes((physionet / "v102s.dat").read_bytes()[:60000])
  (d / "trunc.hea").write_text((physionet / "v102s.hea").read_text().replace("v102s", "trunc"))
  # unreadable: garbage header
  (d / "garbage.hea").write_text("this is not a header\x00\x01\n")
  # missing channel: only RESP
  hdr = (physionet / "v102s.hea").read_text().splitlines()
  (d / "resp.hea").write_text("resp 1 250 75000\n" + hdr[4].replace("v102s", "resp") + "\n")
  shutil.copy(physionet / "v102s.dat", d / "resp.dat")
  # unknown sampling rate: fs 0
  (d / "nofs.hea").write_text(
      "\n".join(
          [hdr[0].replace("v102s", "nofs").replace(" 250 ", " 0 ")]
          + [l.replace("v102s", "nofs") for l in hdr[1:5]]
      )
      + "\n"
  )
  shutil.copy(physionet / "v102s.dat", d / "nofs.dat")


def test_bad_wfdb_inputs_are_skipped_with_reasons(tmp_path, physionet_dir):
  src = tmp_path / "in"
  src.mkdir()
  _write_bad_inputs(src, physionet_dir)
  report = prep.prepare_dataset("wfdb", src, tmp_path / "out", workers=1, progress=False, log=None)
  reasons = {f["file"]: f["reason"] for f in report["files_skipped"]}
  assert reasons["trunc"].startswith("truncated")
  assert reasons["garbage"].startswith("unreadable")
  assert reasons["resp"].startswith("missing channel")
  assert reasons["nofs"].startswith("unknown sampling rate")
  assert report["files_read"] == 2 and report["segments_kept"] == 63
  shards.read_manifest(tmp_path / "out")


def test_bad_array_inputs_are_skipped_with_reasons(tmp_path):
  import neurokit2 as nk

  src = tmp_path / "in"
  src.mkdir()
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  np.savez(src / "good.npz", ecg=ecg, ppg=ppg, fs=125.0)
  np.savez(src / "shape.npz", ecg=np.zeros((2, 3, 100)), ppg=np.zeros((2, 3, 100)), fs=125.0)
  np.savez(src / "nofs.npz", ecg=ecg, ppg=ppg)
  np.savez(src / "noppg.npz", ecg=ecg, abp=ppg, fs=125.0)
  nan = ppg.copy()
  nan[:] = np.nan
  np.savez(src / "nan.npz", ecg=ecg, ppg=nan, fs=125.0)
  flat = np.full_like(ppg, 3.0)
  np.savez(src / "flat.npz", ecg=ecg, ppg=flat, fs=125.0)
  (src / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
  report = prep.prepare_dataset("npz", src, tmp_path / "out", workers=1, progress=False, log=None)
  reasons = {f["file"]: f["reason"] for f in report["files_skipped"]}
  assert reasons["shape.npz"].startswith("wrong shape")
  assert reasons["nofs.npz"].startswith("unknown sampling rate")
  assert reasons["broken.npz"].startswith("unreadable")
  kept = {f["file"]: f["kept"] for f in report["per_file"]}
  assert kept["good.npz"] == 3
  assert kept["nan.npz"] == kept["flat.npz"] == kept["noppg.npz"] == 0
  assert report["stretches_cut"]["nan_run_ppg"]["runs"] == 1
  assert report["stretches_cut"]["flat_line_ppg"]["runs"] == 1
  assert report["segments_dropped"]["missing_ppg"] == 3
  assert report["records_per_split"]["train"] == 3
  # nothing half-written: no temp files left
  assert not list((tmp_path / "out").glob("*.tmp*"))


def test_min_quality_drops_at_prepare_time(tmp_path):
  from xmae_jax.data import preprocess as pp

  report = prep.prepare_dataset(
      "synthetic",
      None,
      tmp_path / "q",
      seed=3,
      progress=False,
      log=None,
      config=pp.PreprocessConfig(min_quality=0.97),
      source_options={"num_subjects": 3, "minutes_per_subject": 1.0, "artifact_rate": 3.0},
  )
  assert sum(v for k, v in report["segments_dropped"].items() if k.startswith("low_quality"))
  for split in shards.SPLITS:
    _, index = (
        shards.split_paths(tmp_path / "q", split)
        if report["records_per_split"][split]
        else (None, None)
    )
    if index is not None:
      assert (index["quality_ppg"] >= 0.97).all() and (index["quality_ecg"] >= 0.97).all()


def test_ppg_alignment_is_reported_and_stored_per_window(tmp_path):
  from xmae_jax.data import preprocess as pp

  report = prep.prepare_dataset(
      "synthetic",
      None,
      tmp_path / "a",
      seed=3,
      progress=False,
      log=None,
      config=pp.PreprocessConfig(ppg_align_seconds=0.1),
      source_options={"num_subjects": 3, "minutes_per_subject": 0.5, "artifact_rate": 0.0},
  )
  a = report["ppg_alignment"]
  assert a["recordings_measured"] == 3 and a["recordings_fallback"] == 0
  assert 0.2 < a["mean_shift_s"] < 0.6
  assert "PPG moved earlier per recording" in (tmp_path / "a" / "report.md").read_text()
  recs = [
      r
      for split in shards.SPLITS
      if report["records_per_split"][split]
      for r in _records(tmp_path / "a", split)[0]
  ]
  assert recs and all(0 < r.meta["ppg_shift_s"] < 1 for r in recs)
  plain = prep.prepare_dataset(
      "synthetic",
      None,
      tmp_path / "p",
      seed=3,
      progress=False,
      log=None,
      source_options={"num_subjects": 3, "minutes_per_subject": 0.5, "artifact_rate": 0.0},
  )
  assert plain["ppg_alignment"] == {}


def _cli(*args, cwd=None):
  return subprocess.run(
      [sys.executable, "-m", "xmae_jax.cli.xmae_prepare", "--no-progress", *args],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=cwd,
  )


def test_cli_errors_are_one_clear_line(tmp_path):
  repo = Path(__file__).resolve().parents[2]
  r = _cli("--source", "gdf", "--output", str(tmp_path / "o"), cwd=repo)
  assert r.returncode != 0 and "unknown source 'gdf'" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  r = _cli(
      "--source",
      "wfdb",
      "--input",
      str(tmp_path / "nope"),
      "--output",
      str(tmp_path / "o"),
      cwd=repo,
  )
  assert r.returncode != 0 and "missing input" in r.stderr
  r = _cli("--source", "synthetic", cwd=repo)
  assert r.returncode != 0 and r.stderr.strip() == (
      "xmae-prepare: error: the following arguments are required: --output"
  )
  (tmp_path / "empty").mkdir()
  r = _cli(
      "--source",
      "csv",
      "--input",
      str(tmp_path / "empty"),
      "--output",
      str(tmp_path / "o"),
      cwd=repo,
  )
  assert r.returncode != 0 and "empty input" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1


def test_output_of_another_schema_is_refused(tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  (other / shards.MANIFEST).write_text(json.dumps({"schema_version": 99}))
  with pytest.raises(prepare_rules.PrepareError, match="another schema"):
    cli.run(["--source", "synthetic", "--output", str(other), "--num-subjects", "1"])
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "thesis.tex").write_text("keep me")
  with pytest.raises(prepare_rules.PrepareError, match="not an xmae dataset"):
    cli.run(["--source", "synthetic", "--output", str(foreign), "--num-subjects", "1"])
  assert (foreign / "thesis.tex").read_text() == "keep me"
  with pytest.raises(prepare_rules.PrepareError, match="val_frac"):
    cli.run(["--source", "synthetic", "--output", str(tmp_path / "new"), "--val-frac", "2"])
  assert not (tmp_path / "new").exists()  # refused before any work
  assert cli.main(["--source", "synthetic", "--output", str(other), "--num-subjects", "1"]) == 1
