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
from xmae_jax.data import prepare_report
from xmae_jax.data import prepare_rules
from xmae_jax.data import prepare_storage
from xmae_jax.data import preprocess as pp
from xmae_jax.data import shards

REPO = Path(__file__).resolve().parents[2]
TWO_PROCESSES = "--direct_num_workers=2 --direct_running_mode=multi_processing"
SYNTHETIC = {"num_subjects": 6, "minutes_per_subject": 0.5}
# counts, reasons and per-file rows; not the timing
REPORT_KEYS = (
    "files_total",
    "files_read",
    "files_skipped",
    "files_missing",
    "segments_kept",
    "segments_dropped",
    "segments_dropped_total",
    "stretches_cut",
    "recordings_skipped",
    "quality_notes",
    "records_per_split",
    "subjects_per_split",
    "per_file",
    "source",
    "input",
    "package_version",
)


def _dataset(d: Path) -> dict:
  """Everything a reader of the dataset sees: shard bytes, index rows, manifest, report."""
  d = Path(d)
  index = {}
  for split in shards.SPLITS:
    with np.load(d / f"{split}-index.npz") as z:
      index[split] = {k: z[k] for k in z.files}
  report = json.loads((d / prepare_report.REPORT_JSON).read_text())
  return {
      "shards": {p.name: p.read_bytes() for p in sorted(d.glob("*.array_record"))},
      "index": index,
      "manifest": json.loads((d / shards.MANIFEST).read_text()),
      "report": {k: report[k] for k in REPORT_KEYS},
  }


def _assert_same_dataset(a: Path, b: Path):
  da, db = _dataset(a), _dataset(b)
  assert "request" in da["manifest"]  # compared below, as is every index column
  assert all(shards.DIGEST in da["index"][s] for s in shards.SPLITS)
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
  assert not (out / prepare_rules.WORK / beam_lib.RUN_MARKER).exists()
  assert not [p for p in (out / prepare_rules.WORK).glob("*") if p.name.startswith("beam-")]


@pytest.fixture(scope="module")
def wfdb_input(tmp_path_factory, physionet_dir):
  """The PhysioNet records (incl. the MIMIC layout and FLAC) plus a header that is garbage."""
  d = tmp_path_factory.mktemp("wfdb") / "in"
  shutil.copytree(physionet_dir, d)
  (d / "garbage.hea").write_text("this is not a header\x00\x01\n")
  return d


def test_beam_with_two_processes_writes_what_the_local_runner_writes(tmp_path, wfdb_input):
  pytest.importorskip("apache_beam")
  local = prep.prepare_dataset(
      "wfdb",
      wfdb_input,
      tmp_path / "local",
      workers=1,
      records_per_shard=16,
      progress=False,
      log=None,
  )
  assert "garbage" in {f["file"] for f in local["files_skipped"]}
  assert (
      sum(
          n > 1
          for n in (
              len(e)
              for e in [
                  shards.read_manifest(tmp_path / "local")["splits"][s]["shards"]
                  for s in shards.SPLITS
              ]
          )
      )
      >= 2
  )  # shard borders are exercised
  report = prep.prepare_dataset(
      "wfdb",
      wfdb_input,
      tmp_path / "beam",
      runner="beam",
      beam_options=TWO_PROCESSES,
      records_per_shard=16,
      log=None,
  )
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
  # a re-run with bigger shards is another dataset: refused, and the output left as it was
  before = _files(out)
  with pytest.raises(
      prepare_rules.PrepareError,
      match=r"holds a dataset made from other inputs/settings "
      r"\(records_per_shard 4 -> 64\): give --overwrite",
  ):
    prep.prepare_dataset("synthetic", None, out, runner="beam", **{**kw, "records_per_shard": 64})
  assert _files(out) == before
  # with overwrite it replaces the old shards (none of them is left behind)
  prep.prepare_dataset(
      "synthetic", None, out, runner="beam", overwrite=True, **{**kw, "records_per_shard": 64}
  )
  prep.prepare_dataset(
      "synthetic", None, tmp_path / "local64", progress=False, **{**kw, "records_per_shard": 64}
  )
  _assert_same_dataset(tmp_path / "local64", out)
  _no_leftovers(out)


def _files(d: Path) -> dict[str, bytes]:
  """Every file under `d` but the timing-bearing reports."""
  return {
      str(p.relative_to(d)): p.read_bytes()
      for p in sorted(d.rglob("*"))
      if p.is_file() and p.name not in (prepare_report.REPORT_JSON, prepare_report.REPORT_MD)
  }


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


class FakeBucket(prepare_storage.Storage):
  """gs://NAME/... kept under a local folder; logs each call, and refuses what GCS cannot do.

  Files arrive only through `put` from a finished local file (GCS has no rename, no append, no
  open-for-write of a half-written object), so this checks that every file is staged locally.
  """

  def __init__(self, root):
    self.root = str(root)

  def _local(self, path):
    assert path.startswith("gs://"), path
    return Path(self.root) / path[len("gs://") :]

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
      i for i, n in enumerate(puts) if n.endswith((".array_record", ".npz"))
  )
  assert calls[-1] == ["delete", "gs://b/ds/.work/" + beam_lib.RUN_MARKER]


def test_beam_file_systems_storage_uploads_through_beam(tmp_path):
  """BeamStorage (the gs:// path) run against Beam's own local file system."""
  pytest.importorskip("apache_beam")
  kw = dict(seed=5, source_options=SYNTHETIC, records_per_shard=4, log=None)
  prep.prepare_dataset("synthetic", None, tmp_path / "local", progress=False, **kw)
  out = tmp_path / "via-beam-fs"
  beam_lib.prepare_dataset_beam(
      "synthetic", None, str(out), storage=prepare_storage.BeamStorage(), **kw
  )
  _assert_same_dataset(tmp_path / "local", out)
  _no_leftovers(out)
  storage = prepare_storage.BeamStorage()
  (out / prepare_rules.WORK / "x").write_bytes(b"")  # object stores list files, not folders
  assert storage.listdir(str(out)) == sorted(p.name for p in out.iterdir())
  try:
    import google.api_core  # noqa: F401  (apache-beam[gcp] installed: gs:// is available)
  except ImportError:
    with pytest.raises(prepare_rules.PrepareError, match=r"output gs://b/ds: .*gcp") as e:
      prepare_rules.check_output(storage, "gs://b/ds")
    assert "\n" not in str(e.value)


def test_remote_output_rules_match_the_local_ones(tmp_path):
  bucket = FakeBucket(tmp_path / "gcs")
  prepare_rules.check_output(bucket, "gs://b/new")  # absent: fine
  (tmp_path / "gcs" / "b" / "thesis").mkdir(parents=True)
  (tmp_path / "gcs" / "b" / "thesis" / "thesis.tex").write_text("keep me")
  with pytest.raises(prepare_rules.PrepareError, match="not an xmae dataset"):
    prepare_rules.check_output(bucket, "gs://b/thesis")
  other = tmp_path / "gcs" / "b" / "other"
  other.mkdir()
  (other / shards.MANIFEST).write_text(json.dumps({"schema_version": 99}))
  with pytest.raises(prepare_rules.PrepareError, match="another schema"):
    prepare_rules.check_output(bucket, "gs://b/other")
  (other / shards.MANIFEST).unlink()
  (other / prepare_rules.WORK).mkdir()  # an interrupted run of ours
  (other / "train-00000-of-00002.array_record").write_bytes(b"")
  prepare_rules.check_output(bucket, "gs://b/other")
  assert isinstance(prepare_storage.storage_for("gs://b/x"), prepare_storage.BeamStorage)
  assert isinstance(prepare_storage.storage_for(str(tmp_path)), prepare_storage.LocalStorage)


def _cli(*args, prelude=""):
  code = (
      f"import sys; {prelude}from xmae_jax.cli import xmae_prepare; "
      f"sys.exit(xmae_prepare.main({['--no-progress', *args]!r}))"
  )
  return subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
  )


def test_missing_beam_and_unknown_runner_are_one_line(tmp_path, monkeypatch):
  out = str(tmp_path / "o")
  r = _cli(
      "--source",
      "synthetic",
      "--output",
      out,
      "--runner",
      "beam",
      prelude="sys.modules['apache_beam'] = None; ",
  )
  assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "pip install xmae-jax[beam]" in r.stderr
  r = _cli("--source", "synthetic", "--output", out, "--runner", "spark")
  assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "unknown runner 'spark' (choose from local, beam)" in r.stderr
  assert not Path(out).exists()  # refused before any work
  with pytest.raises(prepare_rules.PrepareError, match="records-per-shard"):
    prep.prepare_dataset("synthetic", None, out, records_per_shard=0, log=None)
  if importlib.util.find_spec("apache_beam") is not None:
    r = _cli(
        "--source",
        "synthetic",
        "--output",
        out,
        "--runner",
        "beam",
        "--beam-options=--runner=NoSuchRunner",
    )
    assert r.returncode != 0 and "Unexpected pipeline runner: NoSuchRunner" in r.stderr
    assert len([l for l in r.stderr.splitlines() if "xmae-prepare" in l]) == 1
    assert not Path(out).exists()
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  with pytest.raises(prepare_rules.PrepareError, match=r"pip install xmae-jax\[beam\]"):
    prep.prepare_dataset("synthetic", None, out, runner="beam", log=None)
  with pytest.raises(prepare_rules.PrepareError, match="only to --runner beam"):
    cli.run(["--source", "synthetic", "--output", out, "--beam-options=--runner=DirectRunner"])


def _npz(path: Path, seed: int = 0):
  import neurokit2 as nk

  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=seed)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=seed)
  np.savez(path, ecg=ecg, ppg=ppg, fs=125.0)


def test_beam_refuses_another_dataset_unless_overwrite(tmp_path, capsys):
  """A dataset of other inputs (here one the local runner wrote) is kept; --overwrite replaces."""
  pytest.importorskip("apache_beam")
  ds = tmp_path / "ds"
  prep.prepare_dataset(
      "synthetic",
      None,
      ds,
      seed=5,
      source_options=SYNTHETIC,
      records_per_shard=4,
      progress=False,
      log=None,
  )
  before = _files(ds)
  src = tmp_path / "in"
  src.mkdir()
  _npz(src / "rec.npz")
  argv = [
      "--source",
      "npz",
      "--input",
      str(src),
      "--output",
      str(ds),
      "--runner",
      "beam",
      "--no-progress",
  ]
  assert cli.main(argv) != 0
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "other inputs/settings" in err
  assert "source 'synthetic' -> 'npz'" in err and str(ds) in err
  assert _files(ds) == before
  report = cli.run([*argv, "--overwrite"])
  assert report["runner"] == "beam" and report["segments_kept"] == 3
  manifest = shards.read_manifest(ds)
  assert manifest["source"] == "npz" and manifest["request"]["source"] == "npz"
  assert {p.name for p in ds.glob("*.array_record")} == {
      n for e in manifest["splits"].values() for n in e["shards"]
  }
  _no_leftovers(ds)
  # the same request again is no other dataset: it runs (the local runner accepts it too)
  assert cli.run(argv)["segments_kept"] == 3
  assert cli.run([*argv, "--runner", "local"])["segments_kept"] == 3


def test_remote_request_rules_match_the_local_ones(tmp_path):
  """check_request through the storage: an unfinished run's or a dataset's request."""
  bucket = FakeBucket(tmp_path / "gcs")
  request = prepare_rules.dataset_request(
      "synthetic",
      None,
      {"num_subjects": 6},
      pp.PreprocessConfig(),
      seed=1,
      test_frac=0.05,
      val_frac=0.05,
      records_per_shard=4,
  )
  prepare_rules.check_request(bucket, "gs://b/new", request)  # absent: fine
  work = tmp_path / "gcs" / "b" / "ds" / prepare_rules.WORK
  work.mkdir(parents=True)
  (work / prepare_rules.REQUEST).write_text(json.dumps({**request, "records_per_shard": 8}))
  with pytest.raises(
      prepare_rules.PrepareError,
      match=r"unfinished run made from other inputs/settings " r"\(records_per_shard 8 -> 4\)",
  ):
    prepare_rules.check_request(bucket, "gs://b/ds", request)
  prepare_rules.check_request(bucket, "gs://b/ds", request, overwrite=True)
  prepare_rules.check_request(bucket, "gs://b/ds", {**request, "records_per_shard": 8})
  # a manifest is the dataset's word, before any request.json
  (work.parent / shards.MANIFEST).write_text(
      json.dumps(
          {"schema_version": 99, "request": {**request, "split": {**request["split"], "seed": 2}}}
      )
  )
  with pytest.raises(prepare_rules.PrepareError, match=r"holds a dataset .*split.seed 2 -> 1"):
    prepare_rules.check_request(bucket, "gs://b/ds", request)
  with pytest.raises(prepare_rules.PrepareError, match="another schema"):
    prepare_rules.check_output(bucket, "gs://b/ds")
  prepare_rules.check_output(bucket, "gs://b/ds", overwrite=True)  # --overwrite: replaced


def test_beam_nothing_kept_is_the_local_error_and_writes_nothing(tmp_path):
  pytest.importorskip("apache_beam")
  src = tmp_path / "in"
  src.mkdir()
  (src / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
  np.savez(src / "nofs.npz", ecg=np.zeros(4000), ppg=np.zeros(4000))
  errors = {}
  for runner in ("local", "beam"):
    out = tmp_path / runner
    with pytest.raises(prepare_rules.PrepareError) as e:
      prep.prepare_dataset("npz", src, out, runner=runner, progress=False, log=None)
    errors[runner] = str(e.value).replace(str(out), "OUT")
  assert errors["beam"] == errors["local"] and "\n" not in errors["beam"]
  assert errors["beam"].startswith(
      "nothing kept from 2 input(s) (2 skipped), no dataset " "written to OUT: "
  )
  assert not (tmp_path / "beam").exists()  # a new output is not created
  # an existing dataset whose inputs became unusable is left whole, its manifest included
  good = tmp_path / "good"
  good.mkdir()
  _npz(good / "rec.npz")
  ds = tmp_path / "ds"
  prep.prepare_dataset("npz", good, ds, runner="beam", log=None)
  before = _files(ds)
  (good / "rec.npz").write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(prepare_rules.PrepareError, match=r"^nothing kept from 1 input\(s\)"):
    prep.prepare_dataset("npz", good, ds, runner="beam", log=None)
  assert _files(ds) == before
  _no_leftovers(ds)


def test_verify_passes_a_beam_written_dataset(tmp_path, capsys):
  pytest.importorskip("apache_beam")
  out = tmp_path / "beam"
  prep.prepare_dataset(
      "synthetic",
      None,
      out,
      runner="beam",
      seed=5,
      source_options=SYNTHETIC,
      records_per_shard=4,
      log=None,
  )
  capsys.readouterr()
  result = cli.run(["--verify", str(out)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split(":")[0] for l in lines] == ["manifest", *shards.SPLITS]
  assert all(": ok" in l for l in lines) and "matches its digest" in lines[1]
  assert all(v.ok and v.digests for v in result["verdicts"] if v.part != "manifest")
