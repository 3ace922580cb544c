"""xmae-prepare --runner beam: the same dataset as the local runner, the gs:// seam, the errors."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import beam as beam_lib
from xmae_jax.data import prepare as prep
from xmae_jax.data import shards

REPO = Path(__file__).resolve().parents[2]
TWO_PROCESSES = "--direct_num_workers=2 --direct_running_mode=multi_processing"
SYNTHETIC = {"num_subjects": 6, "minutes_per_subject": 0.5}
# counts, reasons and per-file rows; not the timing
REPORT_KEYS = ("files_total", "files_read", "files_skipped", "files_missing", "segments_kept",
               "segments_dropped", "segments_dropped_total", "stretches_cut",
               "recordings_skipped", "quality_notes", "records_per_split", "subjects_per_split",
               "per_file", "source", "input", "package_version")


def _dataset(d: Path) -> dict:
  """Everything a reader of the dataset sees: shard bytes, index rows, manifest, report."""
  d = Path(d)
  index = {}
  for split in shards.SPLITS:
    with np.load(d / f"{split}-index.npz") as z:
      index[split] = {k: z[k] for k in z.files}
  report = json.loads((d / prep.REPORT_JSON).read_text())
  return {"shards": {p.name: p.read_bytes() for p in sorted(d.glob("*.array_record"))},
          "index": index,
          "manifest": json.loads((d / shards.MANIFEST).read_text()),
          "report": {k: report[k] for k in REPORT_KEYS}}


def _assert_same_dataset(a: Path, b: Path):
  da, db = _dataset(a), _dataset(b)
  assert sorted(da["shards"]) == sorted(db["shards"])
  for name in da["shards"]:
    assert da["shards"][name] == db["shards"][name], name
  for split in shards.SPLITS:
    assert sorted(da["index"][split]) == sorted(db["index"][split])
    for col, values in da["index"][split].items():
      assert values.dtype == db["index"][split][col].dtype, (split, col)
      np.testing.assert_array_equal(values, db["index"][split][col], err_msg=f"{split}/{col}")
  assert da["manifest"] == db["manifest"]
  assert da["report"] == db["report"]


def _no_leftovers(out: Path):
  assert not list(out.rglob("*.tmp*"))
  assert not (out / prep.WORK / beam_lib.RUN_MARKER).exists()
  assert not [p for p in (out / prep.WORK).glob("*") if p.name.startswith("beam-")]


@pytest.fixture(scope="module")
def wfdb_input(tmp_path_factory, physionet_dir):
  """The PhysioNet records (incl. the MIMIC layout and FLAC) plus a header that is garbage."""
  d = tmp_path_factory.mktemp("wfdb") / "in"
  shutil.copytree(physionet_dir, d)
  (d / "garbage.hea").write_text("this is not a header\x00\x01\n")
  return d


def test_beam_with_two_processes_writes_what_the_local_runner_writes(tmp_path, wfdb_input):
  pytest.importorskip("apache_beam")
  local = prep.prepare_dataset("wfdb", wfdb_input, tmp_path / "local", workers=1,
                               records_per_shard=16, progress=False, log=None)
  assert "garbage" in {f["file"] for f in local["files_skipped"]}
  assert sum(n > 1 for n in (len(e) for e in
                             [shards.read_manifest(tmp_path / "local")["splits"][s]["shards"]
                              for s in shards.SPLITS])) >= 2     # shard borders are exercised
  report = prep.prepare_dataset("wfdb", wfdb_input, tmp_path / "beam", runner="beam",
                                beam_options=TWO_PROCESSES, records_per_shard=16, log=None)
  assert report["runner"] == "beam" and report["segments_kept"] == local["segments_kept"]
  _assert_same_dataset(tmp_path / "local", tmp_path / "beam")
  _no_leftovers(tmp_path / "beam")


def test_beam_synthetic_matches_and_rerun_replaces_the_output(tmp_path):
  pytest.importorskip("apache_beam")
  kw = dict(seed=5, source_options=SYNTHETIC, records_per_shard=4, log=None)
  prep.prepare_dataset("synthetic", None, tmp_path / "local", progress=False, **kw)
  out = tmp_path / "beam"
  prep.prepare_dataset("synthetic", None, out, runner="beam", beam_options=TWO_PROCESSES, **kw)
  _assert_same_dataset(tmp_path / "local", out)
  # a re-run with bigger shards replaces the old shards (none of them is left behind)
  prep.prepare_dataset("synthetic", None, out, runner="beam", **{**kw, "records_per_shard": 64})
  prep.prepare_dataset("synthetic", None, tmp_path / "local64", progress=False,
                       **{**kw, "records_per_shard": 64})
  _assert_same_dataset(tmp_path / "local64", out)
  _no_leftovers(out)


def test_beam_npz_with_broken_files_matches(tmp_path):
  """Array inputs, one of them not a zip and one without a rate: skipped alike by both."""
  pytest.importorskip("apache_beam")
  import neurokit2 as nk
  src = tmp_path / "in"
  src.mkdir()
  for i in range(3):
    ecg = nk.ecg_simulate(duration=40, sampling_rate=125, heart_rate=60 + 5 * i, random_state=i)
    ppg = nk.ppg_simulate(duration=40, sampling_rate=125, heart_rate=60 + 5 * i, random_state=i)
    np.savez(src / f"s{i}.npz", ecg=ecg, ppg=ppg, fs=125.0)
  np.savez(src / "nofs.npz", ecg=ecg, ppg=ppg)
  (src / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
  kw = dict(seed=1, records_per_shard=2, log=None)
  local = prep.prepare_dataset("npz", src, tmp_path / "local", progress=False, **kw)
  assert {f["file"] for f in local["files_skipped"]} == {"nofs.npz", "broken.npz"}
  prep.prepare_dataset("npz", src, tmp_path / "beam", runner="beam", **kw)
  _assert_same_dataset(tmp_path / "local", tmp_path / "beam")
  _no_leftovers(tmp_path / "beam")


class FakeBucket(beam_lib.Storage):
  """gs://NAME/... kept under a local folder; logs each call, and refuses what GCS cannot do.

  Files arrive only through `put` from a finished local file (GCS has no rename, no append, no
  open-for-write of a half-written object), so this checks that every file is staged locally.
  """

  def __init__(self, root):
    self.root = str(root)

  def _local(self, path):
    assert path.startswith("gs://"), path
    return Path(self.root) / path[len("gs://"):]

  def _log(self, *entry):
    with open(Path(self.root) / "calls.jsonl", "a") as f:
      f.write(json.dumps(entry) + "\n")

  def exists(self, path):
    return self._local(path).exists()

  def read_bytes(self, path):
    return self._local(path).read_bytes()

  def put(self, local_path, path):
    assert not str(Path(local_path).resolve()).startswith(str(Path(self.root).resolve()))
    dest = self._local(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(local_path).read_bytes())
    Path(local_path).unlink()
    self._log("put", path)

  def delete(self, path):
    self._local(path).unlink(missing_ok=True)
    self._log("delete", path)

  def listdir(self, path):
    d = self._local(path)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_gs_output_is_staged_locally_and_uploaded(tmp_path):
  pytest.importorskip("apache_beam")
  bucket = FakeBucket(tmp_path / "gcs")
  kw = dict(seed=5, source_options=SYNTHETIC, records_per_shard=4, log=None)
  report = prep.prepare_dataset("synthetic", None, tmp_path / "local", progress=False, **kw)
  remote = beam_lib.prepare_dataset_beam("synthetic", None, "gs://b/ds", storage=bucket, **kw)
  assert remote["records_per_split"] == report["records_per_split"]
  _assert_same_dataset(tmp_path / "local", tmp_path / "gcs" / "b" / "ds")
  calls = [json.loads(l) for l in (tmp_path / "gcs" / "calls.jsonl").read_text().splitlines()]
  puts = [c[1].rsplit("/", 1)[1] for c in calls if c[0] == "put"]
  assert puts.index(shards.MANIFEST) > max(
      i for i, n in enumerate(puts) if n.endswith((".array_record", ".npz")))
  assert calls[-1] == ["delete", "gs://b/ds/.work/" + beam_lib.RUN_MARKER]


def test_beam_file_systems_storage_uploads_through_beam(tmp_path):
  """BeamStorage (the gs:// path) run against Beam's own local file system."""
  pytest.importorskip("apache_beam")
  kw = dict(seed=5, source_options=SYNTHETIC, records_per_shard=4, log=None)
  prep.prepare_dataset("synthetic", None, tmp_path / "local", progress=False, **kw)
  out = tmp_path / "via-beam-fs"
  beam_lib.prepare_dataset_beam("synthetic", None, str(out), storage=beam_lib.BeamStorage(),
                                **kw)
  _assert_same_dataset(tmp_path / "local", out)
  _no_leftovers(out)
  storage = beam_lib.BeamStorage()
  (out / prep.WORK / "x").write_bytes(b"")        # object stores list files, not folders
  assert storage.listdir(str(out)) == sorted(p.name for p in out.iterdir())
  try:
    import google.api_core  # noqa: F401  (apache-beam[gcp] installed: gs:// is available)
  except ImportError:
    with pytest.raises(prep.PrepareError, match=r"output gs://b/ds: .*gcp") as e:
      beam_lib.check_output(storage, "gs://b/ds")
    assert "\n" not in str(e.value)


def test_remote_output_rules_match_the_local_ones(tmp_path):
  bucket = FakeBucket(tmp_path / "gcs")
  beam_lib.check_output(bucket, "gs://b/new")                   # absent: fine
  (tmp_path / "gcs" / "b" / "thesis").mkdir(parents=True)
  (tmp_path / "gcs" / "b" / "thesis" / "thesis.tex").write_text("keep me")
  with pytest.raises(prep.PrepareError, match="not an xmae dataset"):
    beam_lib.check_output(bucket, "gs://b/thesis")
  other = tmp_path / "gcs" / "b" / "other"
  other.mkdir()
  (other / shards.MANIFEST).write_text(json.dumps({"schema_version": 99}))
  with pytest.raises(prep.PrepareError, match="another schema"):
    beam_lib.check_output(bucket, "gs://b/other")
  (other / shards.MANIFEST).unlink()
  (other / prep.WORK).mkdir()                                    # an interrupted run of ours
  (other / "train-00000-of-00002.array_record").write_bytes(b"")
  beam_lib.check_output(bucket, "gs://b/other")
  assert isinstance(beam_lib.storage_for("gs://b/x"), beam_lib.BeamStorage)
  assert isinstance(beam_lib.storage_for(str(tmp_path)), beam_lib.LocalStorage)


def _cli(*args, prelude=""):
  code = (f"import sys; {prelude}from xmae_jax.cli import xmae_prepare; "
          f"sys.exit(xmae_prepare.main({['--no-progress', *args]!r}))")
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=REPO)


def test_missing_beam_and_unknown_runner_are_one_line(tmp_path, monkeypatch):
  out = str(tmp_path / "o")
  r = _cli("--source", "synthetic", "--output", out, "--runner", "beam",
           prelude="sys.modules['apache_beam'] = None; ")
  assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "pip install xmae-jax[beam]" in r.stderr
  r = _cli("--source", "synthetic", "--output", out, "--runner", "spark")
  assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "unknown runner 'spark' (choose from local, beam)" in r.stderr
  assert not Path(out).exists()                                  # refused before any work
  with pytest.raises(prep.PrepareError, match="records-per-shard"):
    prep.prepare_dataset("synthetic", None, out, records_per_shard=0, log=None)
  if importlib.util.find_spec("apache_beam") is not None:
    r = _cli("--source", "synthetic", "--output", out, "--runner", "beam",
             "--beam-options=--runner=NoSuchRunner")
    assert r.returncode != 0 and "Unexpected pipeline runner: NoSuchRunner" in r.stderr
    assert len([l for l in r.stderr.splitlines() if "xmae-prepare" in l]) == 1
    assert not Path(out).exists()
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  with pytest.raises(prep.PrepareError, match=r"pip install xmae-jax\[beam\]"):
    prep.prepare_dataset("synthetic", None, out, runner="beam", log=None)
  with pytest.raises(prep.PrepareError, match="only to --runner beam"):
    cli.run(["--source", "synthetic", "--output", out, "--beam-options=--runner=DirectRunner"])
  with pytest.raises(prep.PrepareError, match="not a local path"):
    prep.prepare_dataset("synthetic", None, "gs://b/ds", log=None)
