"""Injected faults in preparing and reading a dataset: each ends in one line naming the file or
value (an `errors.XmaeError`; the command line prints it on stderr and exits non-zero) and
loses nothing that was there before."""

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from xmae_jax import errors
from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import dataset_reader
from xmae_jax.data import dataset_verify
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_local
from xmae_jax.data import prepare_report
from xmae_jax.data import prepare_rules
from xmae_jax.data import shards
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import wfdb as wfdb_source

SIX = {"num_subjects": 6, "minutes_per_subject": 0.5}


def _synthetic(out, **kw):
  return prep.prepare_dataset(
      "synthetic",
      None,
      out,
      workers=1,
      seed=77,
      source_options={**SIX, **kw.pop("options", {})},
      progress=False,
      log=None,
      **kw,
  )


def _snapshot(d: Path) -> dict[str, bytes]:
  """Every file under `d` (the cache included) -> its bytes, but the timing-bearing reports
  and the lock (it describes the last run)."""
  return {
      str(p.relative_to(d)): p.read_bytes()
      for p in sorted(d.rglob("*"))
      if p.is_file()
      and p.name
      not in (prepare_report.REPORT_JSON, prepare_report.REPORT_MD, prepare_local.LOCK_FILE)
  }


def _run_cli(argv, capsys):
  """cli.main in process: (exit code, stdout, stderr)."""
  code = cli.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def six(tmp_path_factory):
  out = tmp_path_factory.mktemp("six") / "ds"
  _synthetic(out)
  return out


def _npz_input(d: Path) -> Path:
  import neurokit2 as nk

  d.mkdir(parents=True, exist_ok=True)
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  np.savez(d / "rec.npz", ecg=ecg, ppg=ppg, fs=125.0)
  return d


# ------------------------------------------------------------------ 2: a dataset is not replaced


def test_a_dataset_of_other_inputs_is_refused_and_kept(six, tmp_path, capsys):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  before = _snapshot(ds)
  src = _npz_input(tmp_path / "in")
  with pytest.raises(prepare_rules.PrepareError) as e:
    prep.prepare_dataset("npz", src, ds, progress=False, log=None)
  msg = str(e.value)
  assert "\n" not in msg and str(ds) in msg and "other inputs/settings" in msg
  assert "source 'synthetic' -> 'npz'" in msg and "--overwrite" in msg
  assert _snapshot(ds) == before  # shards, index, cache kept
  code, _, err = _run_cli(
      ["--source", "npz", "--input", str(src), "--output", str(ds), "--no-progress"], capsys
  )
  assert code != 0 and len(err.strip().splitlines()) == 1 and "other inputs/settings" in err
  # another setting of the same source is another dataset too
  with pytest.raises(prepare_rules.PrepareError, match=r"split.seed 77 -> 5"):
    prep.prepare_dataset(
        "synthetic", None, ds, seed=5, source_options=SIX, progress=False, log=None
    )
  assert _snapshot(ds) == before
  # the same command again resumes (here: rewrites the same bytes from the cache)
  again = _synthetic(ds)
  assert again["resumed_units"] == 6 and _snapshot(ds) == before
  # --overwrite replaces it
  code = cli.run(
      ["--source", "npz", "--input", str(src), "--output", str(ds), "--no-progress", "--overwrite"]
  )
  assert code["segments_kept"] == 3 and shards.read_manifest(ds)["source"] == "npz"


def test_an_unfinished_run_of_other_settings_is_refused(tmp_path):
  ds = tmp_path / "ds"
  _synthetic(ds)
  (ds / shards.MANIFEST).unlink()  # as if stopped while writing
  cache = sorted(p.name for p in (ds / prepare_rules.WORK).rglob("*.msgpack"))
  with pytest.raises(prepare_rules.PrepareError, match="unfinished run made from other inputs"):
    _synthetic(ds, options={"num_subjects": 7})
  assert sorted(p.name for p in (ds / prepare_rules.WORK).rglob("*.msgpack")) == cache
  assert _synthetic(ds)["resumed_units"] == 6  # the same request completes


def test_a_dataset_prepared_before_requests_were_recorded_still_resumes(six, tmp_path):
  import json

  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  m = json.loads((ds / shards.MANIFEST).read_text())
  del m["request"]
  (ds / shards.MANIFEST).write_text(json.dumps(m))
  (ds / prepare_rules.WORK / prepare_rules.REQUEST).unlink()
  assert _synthetic(ds)["resumed_units"] == 6
  shutil.copytree(six, tmp_path / "old")
  (tmp_path / "old" / shards.MANIFEST).write_text(json.dumps(m))
  with pytest.raises(prepare_rules.PrepareError, match="source_options.num_subjects 6 -> 7"):
    _synthetic(tmp_path / "old", options={"num_subjects": 7})


# ------------------------------------------------------------------ 5: garbled WFDB rate


@pytest.mark.parametrize("field", ["-125", "-0.5", "abc250", "0", "nan"])
def test_a_garbled_wfdb_sampling_rate_skips_the_record(physionet_dir, tmp_path, field):
  src = tmp_path / "in"
  src.mkdir()
  lines = (physionet_dir / "v102s.hea").read_text().splitlines()
  first = lines[0].split()
  first[2] = field
  (src / "bad.hea").write_text(
      "\n".join(
          [" ".join(first).replace("v102s", "bad")] + [l.replace("v102s", "bad") for l in lines[1:]]
      )
      + "\n"
  )
  shutil.copy(physionet_dir / "v102s.dat", src / "bad.dat")
  with pytest.raises(
      SourceError, match=rf"bad.hea: sampling rate field '{field}' is not a " r"positive number"
  ):
    list(wfdb_source.read(str(src / "bad"), {}))
  for name in ("a103l.hea", "a103l.mat"):
    shutil.copy(physionet_dir / name, src / name)
  report = prep.prepare_dataset("wfdb", src, tmp_path / "out", progress=False, log=None)
  reasons = {f["file"]: f["reason"] for f in report["files_skipped"]}
  assert reasons == {"bad": reasons["bad"]} and reasons["bad"].startswith("unknown sampling rate")
  assert report["files_read"] == 1 and report["segments_kept"] == 33  # a103l only


def test_a_valid_wfdb_rate_field_is_read_as_written(physionet_dir, tmp_path):
  lines = (physionet_dir / "v102s.hea").read_text().splitlines()
  first = lines[0].split()
  first[2] = "125/1000(0)"  # rate/counter(base)
  (tmp_path / "r.hea").write_text(
      "\n".join(
          [" ".join(first).replace("v102s", "r")] + [l.replace("v102s", "r") for l in lines[1:]]
      )
      + "\n"
  )
  shutil.copy(physionet_dir / "v102s.dat", tmp_path / "r.dat")
  assert wfdb_source.header_fs(tmp_path / "r") == 125.0
  (recording,) = wfdb_source.read(str(tmp_path / "r"), {})
  assert recording.signals["ppg"][1] == 125.0


# ------------------------------------------------------------------ 7: verify, and reading


def test_verify_passes_a_fresh_dataset_with_digests(six, capsys):
  _, index = shards.split_paths(six, "train")
  assert index["subject"].shape[0] == 12
  code = cli.run(["--verify", str(six)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert [l.split(":")[0] for l in lines] == ["manifest", "train", "validation", "test"]
  assert all(": ok" in l for l in lines) and "matches its digest" in lines[1]
  assert all(v.ok for v in code["verdicts"])


def _flip(path: Path, offset: int):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


def test_verify_and_reading_name_the_shard_and_record_of_a_flipped_byte(six, tmp_path, capsys):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  shard = ds / "train-00000-of-00001.array_record"
  _flip(shard, 20000)  # inside record 4's chunk
  code, out, err = _run_cli(["--verify", str(ds)], capsys)
  assert code != 0 and len(err.strip().splitlines()) == 1
  assert f"shard {shard} record 4 (position 4 of split 'train')" in err
  assert "train: FAILED" in out and "validation: ok" in out and "test: ok" in out
  r = dataset_reader.ShardReader(str(ds), "train")
  r.read(np.arange(4), ("ppg", "ecg"))  # the records before it read
  with pytest.raises(shards.DatasetError) as e:
    r.read(np.arange(12), ("ppg", "ecg"))
  assert isinstance(e.value, errors.XmaeError) and "\n" not in str(e.value)
  assert f"shard {shard} record 4 (position 4 of split 'train') is unreadable" in str(e.value)


def test_verify_finds_changed_records_and_index_rows(six, tmp_path):
  from array_record.python import array_record_module as arm

  from xmae_jax.data import record as record_lib

  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  shard = ds / "validation-00000-of-00001.array_record"
  raw = arm.ArrayRecordReader(str(shard)).read_all()
  rec = record_lib.decode(raw[1])
  rec.ppg = -rec.ppg  # a valid record, other bytes
  raw[1] = record_lib.encode(rec)
  shard.unlink()
  w = arm.ArrayRecordWriter(str(shard), shards.WRITER_OPTIONS)
  for b in raw:
    w.write(b)
  w.close()
  with np.load(ds / "test-index.npz") as z:
    index = dict(z)
  index["quality_ecg"][0] += 0.25
  np.savez(ds / "test-index.npz", **index)
  with pytest.raises(prepare_rules.PrepareError) as e:
    prep.verify(ds, log=None)
  assert "\n" not in str(e.value) and "2 problem(s) in validation, test" in str(e.value)
  verdicts = {v.part: v for v in dataset_verify.verify_dataset(ds)}
  assert verdicts["train"].ok
  assert verdicts["validation"].problems == [
      f"shard {shard} record 1 (position 1 of split 'validation'): digest mismatch (the bytes "
      f"changed since xmae-prepare wrote them)"
  ]
  assert "record 0 (position 0 of split 'test'): quality_ecg" in verdicts["test"].problems[0]


def test_verify_without_digests_checks_decoding_and_the_index(six, tmp_path):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  for split in shards.SPLITS:
    with np.load(ds / f"{split}-index.npz") as z:
      index = {k: z[k] for k in shards.INDEX_FIELDS}
    np.savez(ds / f"{split}-index.npz", **index)  # as prepared before digests
  lines = [v.line() for v in dataset_verify.verify_dataset(ds)]
  assert all(": ok" in l for l in lines) and "no digests to check" in lines[1]
  with np.load(ds / "train-index.npz") as z:
    index = dict(z)
  index["has_ecg"][3] = False
  index["subject"] = index["subject"][:-1]
  np.savez(ds / "train-index.npz", **index)
  (train,) = [v for v in dataset_verify.verify_dataset(ds) if v.part == "train"]
  assert not train.ok and "column 'subject' has 11 rows, the manifest says 12" in train.problems[0]


def test_verify_checks_the_manifest(six, tmp_path):
  import json

  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  m = json.loads((ds / shards.MANIFEST).read_text())
  m["splits"]["test"]["records"] = 4
  m["splits"]["validation"]["shards"] = ["validation-00000-of-00002.array_record"]
  (ds / shards.MANIFEST).write_text(json.dumps(m))
  verdicts = {v.part: v for v in dataset_verify.verify_dataset(ds)}
  assert "split 'test' has records 4, its shards 3" in verdicts["test"].problems[0]
  assert (
      "validation-00000-of-00002.array_record listed in the manifest is missing"
      in verdicts["validation"].problems[0]
  )
  (ds / shards.MANIFEST).unlink()
  with pytest.raises(shards.DatasetError, match="manifest.json is missing"):
    prep.verify(ds, log=None)


# ------------------------------------------------------------------ 9: unusable input


def _csv_inputs(d: Path) -> Path:
  import neurokit2 as nk
  import pandas as pd

  d.mkdir(parents=True, exist_ok=True)
  n = 30 * 125
  pd.DataFrame({"ecg": np.full(n, np.nan), "ppg": np.full(n, np.nan)}).to_csv(
      d / "allnan.csv", index=False
  )
  pd.DataFrame({"ecg": ["x"] * n, "ppg": ["y"] * n}).to_csv(d / "alltext.csv", index=False)
  pd.DataFrame({"ecg": np.full(n, 3.0), "ppg": np.full(n, 1.0)}).to_csv(d / "flat.csv", index=False)
  (d / "broken.csv").write_bytes(b"\xff\xfe\x00garbage\x00")
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  pd.DataFrame({"ecg": ecg}).to_csv(d / "noppg.csv", index=False)
  return d


def test_nothing_kept_fails_with_the_reasons_and_leaves_the_output(tmp_path, capsys):
  src = _csv_inputs(tmp_path / "in")
  out = tmp_path / "out"
  with pytest.raises(prepare_rules.PrepareError) as e:
    prep.prepare_dataset("csv", src, out, source_options={"fs": 125.0}, progress=False, log=None)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("nothing kept from 5 input(s) (1 skipped)")
  assert "broken.csv: unreadable" in msg and "allnan: all_nan: ppg has no finite sample" in msg
  assert "and 6 more" in msg
  assert not (out / shards.MANIFEST).exists() and not list(out.glob("*.array_record"))
  code, _, err = _run_cli(
      [
          "--source",
          "csv",
          "--input",
          str(src),
          "--fs",
          "125",
          "--output",
          str(out),
          "--no-progress",
          "--workers",
          "1",
      ],
      capsys,
  )
  assert code != 0 and len(err.strip().splitlines()) == 1 and "nothing kept" in err


def test_unusable_recordings_say_what_they_are(tmp_path):
  import neurokit2 as nk
  import pandas as pd

  src = _csv_inputs(tmp_path / "in")
  ecg = nk.ecg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  ppg = nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=70, random_state=0)
  df = pd.DataFrame({"ecg": ecg, "ppg": ppg.astype(object)})
  df.loc[100:110, "ppg"] = "err"
  df.to_csv(src / "textcells.csv", index=False)
  report = prep.prepare_dataset(
      "csv", src, tmp_path / "out", source_options={"fs": 125.0}, progress=False, log=None
  )
  assert report["segments_kept"] == 3  # textcells.csv: 30 s
  assert report["segments_dropped"] == {
      "all_nan_ppg": 1,
      "all_text_ppg": 1,
      "flat_ppg": 1,
      "missing_ppg": 3,
  }
  warnings = {(w["input"], w["warning"]) for w in report["input_warnings"]}
  assert (
      "textcells.csv",
      "non-numeric cells: 11 ppg value(s) were text and were read as " "missing",
  ) in warnings
  assert (
      "noppg.csv",
      "missing channel: no ppg signal (required by --require-modalities both)",
  ) in warnings
  assert ("alltext.csv", "all_text: ecg holds only text (3750 samples)") in warnings
  assert ("flat.csv", "flat: ppg is flat (every sample 1) (3750 samples)") in warnings
  assert "non-numeric cells: 11 ppg" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("fs", ["-5", "0", "nan", "fast"])
def test_a_bad_fs_is_rejected_as_a_flag(tmp_path, capsys, fs):
  src = _csv_inputs(tmp_path / "in")
  code, _, err = _run_cli(
      ["--source", "csv", "--input", str(src), "--fs", fs, "--output", str(tmp_path / "o")], capsys
  )
  assert code != 0 and err.strip() == (
      f"xmae-prepare: error: argument --fs: must be a " f"positive number of Hz, got '{fs}'"
  )
  with pytest.raises(prepare_rules.PrepareError, match="--fs must be a positive number of Hz"):
    prep.prepare_dataset(
        "csv",
        src,
        tmp_path / "o",
        source_options={"fs": float(fs) if fs != "fast" else fs},
        progress=False,
        log=None,
    )
  assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ 10/11: full or read-only disk


def _enospc_after(monkeypatch, suffix: str, keep: int = 100):
  """Path.write_bytes writes `keep` bytes of files ending in `suffix`, then the disk is full."""
  real = Path.write_bytes

  def full(self, data):
    if self.name.endswith(suffix):
      real(self, data[:keep])
      raise OSError(errno.ENOSPC, "No space left on device")  # write(): no file name
    return real(self, data)

  monkeypatch.setattr(Path, "write_bytes", full)


def test_disk_full_in_the_cache_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  ds = tmp_path / "ds"
  with monkeypatch.context() as m:
    _enospc_after(m, ".msgpack")
    with pytest.raises(prepare_rules.PrepareError) as e:
      _synthetic(ds)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"cannot write {ds / prepare_rules.WORK}")
  assert msg.endswith(".msgpack: No space left on device")
  assert not list((ds / prepare_rules.WORK).rglob("*.tmp*"))
  (work,) = [p for p in (ds / prepare_rules.WORK).iterdir() if p.is_dir()]
  (work / ".0123abcd.tmp-99999.msgpack").write_bytes(b"half")  # a run killed mid-write
  _synthetic(ds)
  assert not list(ds.rglob("*.tmp*")) and len(list(work.glob("*.msgpack"))) == 6


def test_disk_full_while_writing_shards_keeps_the_previous_dataset(six, tmp_path, monkeypatch):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  before = _snapshot(ds)
  real = shards.arm.ArrayRecordWriter
  written = []

  class FullDisk:  # full at the third record

    def __init__(self, path, options):
      self.path, self.w = path, real(path, options)

    def write(self, data):
      written.append(1)
      if len(written) == 3:
        raise RuntimeError(
            f"write() failed: No space left on device; writing {self.path}; " f"at byte 4096"
        )
      self.w.write(data)

    def close(self):
      self.w.close()

  monkeypatch.setattr(shards.arm, "ArrayRecordWriter", FullDisk)
  with pytest.raises(prepare_rules.PrepareError) as e:
    _synthetic(ds, records_per_shard=2, overwrite=True)
  assert "\n" not in str(e.value)
  assert str(e.value) == (
      f"cannot write {ds / '.train-00001.array_record.tmp'}: write() failed: "
      f"No space left on device"
  )
  after = _snapshot(ds)
  request = f"{prepare_rules.WORK}/{prepare_rules.REQUEST}"
  assert after.pop(request) != before.pop(request)
  assert after == before and not list(ds.glob(".*tmp*"))  # the dataset is whole


def test_a_read_only_output_is_one_line(six, tmp_path, monkeypatch):
  real = Path.mkdir

  def read_only(self, *a, **kw):
    if prepare_rules.WORK in self.parts:
      raise OSError(errno.EROFS, "Read-only file system", str(self))
    return real(self, *a, **kw)

  monkeypatch.setattr(Path, "mkdir", read_only)
  with pytest.raises(prepare_rules.PrepareError) as e:
    _synthetic(tmp_path / "ds")
  assert str(e.value).startswith(f"cannot write {tmp_path / 'ds' / prepare_rules.WORK}")
  assert str(e.value).endswith(": Read-only file system")


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (needs root and mount; skipped elsewhere, the monkeypatched tests stand)."""
  import os
  import subprocess

  disk = tmp_path / "disk"
  disk.mkdir()
  if (
      os.geteuid() != 0
      or subprocess.run(
          ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
      ).returncode
  ):
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield disk
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_a_really_full_disk_keeps_the_dataset_and_a_rerun_completes(six, small_disk):
  import os

  ds = small_disk / "ds"
  shutil.copytree(six, ds)
  st = os.statvfs(small_disk)
  fill = small_disk / "fill"
  fill.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 100_000))  # leave ~100 kB
  before = _snapshot(ds)
  with pytest.raises(prepare_rules.PrepareError) as e:
    _synthetic(ds, records_per_shard=2, overwrite=True)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"cannot write {ds}/") and "No space left" in msg
  after = _snapshot(ds)
  request = f"{prepare_rules.WORK}/{prepare_rules.REQUEST}"
  after.pop(request), before.pop(request)
  assert after == before and not list(ds.rglob("*.tmp*"))
  prep.verify(ds, log=None)  # the old dataset is whole
  fill.unlink()
  report = _synthetic(ds, records_per_shard=2, overwrite=True)
  assert report["resumed_units"] == 6 and not list(ds.rglob("*.tmp*"))
  assert len(shards.read_manifest(ds)["splits"]["train"]["shards"]) == 6
  prep.verify(ds, log=None)
