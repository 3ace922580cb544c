"""Injected faults of the third reliability pass on the data side (issue 21: items 7, 8, 9, 11,
12, 15, 18, 20): each ends in one line naming the file or value (`xmae-prepare: error: ...`)
or gives the correct result."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from xmae_jax.cli import xmae_prepare as cli
from xmae_jax.data import dataset_reader
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_local
from xmae_jax.data import prepare_report
from xmae_jax.data import prepare_rules
from xmae_jax.data import prepare_units
from xmae_jax.data import preprocess as pp
from xmae_jax.data import shards
from xmae_jax.data.sources import wfdb as wfdb_source

REPO = Path(__file__).resolve().parents[2]
SIX = {"num_subjects": 6, "minutes_per_subject": 0.5}
FS = 125


def _synthetic(out, **kw):
  kw.setdefault("seed", 77)
  return prep.prepare_dataset(
      "synthetic",
      None,
      out,
      workers=1,
      source_options={**SIX, **kw.pop("options", {})},
      progress=False,
      log=None,
      **kw,
  )


def _one_line_error(code, err, *needles):
  lines = err.strip().splitlines()
  assert code == 1 and len(lines) == 1, err
  assert lines[0].startswith("xmae-prepare: error: "), err
  for n in needles:
    assert str(n) in lines[0], (n, err)
  return lines[0]


def _shard_bytes(d: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(d.glob("*.array_record"))}


@pytest.fixture(scope="module")
def six(tmp_path_factory):
  out = tmp_path_factory.mktemp("six") / "ds"
  _synthetic(out)
  return out


def _signals(seconds=60, seed=0):
  import neurokit2 as nk

  ecg = nk.ecg_simulate(duration=seconds, sampling_rate=FS, heart_rate=70, random_state=seed)
  ppg = nk.ppg_simulate(duration=seconds, sampling_rate=FS, heart_rate=70, random_state=seed)
  return np.asarray(ecg, float), np.asarray(ppg, float)


# ------------------------------------------------------------------ 7: a truncated shard


@pytest.mark.parametrize("cut", ["100_bytes", "half", "all"])
def test_verify_names_a_truncated_shard_in_one_line(six, tmp_path, capsys, cut):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  shard = ds / shards.read_manifest(ds)["splits"]["train"]["shards"][0]
  size = shard.stat().st_size
  os.truncate(shard, {"100_bytes": size - 100, "half": size // 2, "all": 0}[cut])
  code = cli.main(["--verify", str(ds)])
  out, err = capsys.readouterr()
  _one_line_error(code, err, shard, "truncated")
  assert f"train: FAILED: shard {shard}" in out
  assert "validation: ok" in out and "test: ok" in out  # the other splits still checked


# ------------------------------------------------------------------ 18: names from a manifest


@pytest.mark.parametrize("bad", ["../outside.array_record", "ABSOLUTE", "sub/x.array_record", ".."])
def test_shard_names_leading_outside_the_dataset_are_refused(six, tmp_path, capsys, bad):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  # a bait: a valid shard outside the dataset folder, where the name points
  outside = tmp_path / "outside.array_record"
  first = shards.read_manifest(ds)["splits"]["train"]["shards"][0]
  shutil.copy(ds / first, outside)
  name = str(outside) if bad == "ABSOLUTE" else bad
  manifest = json.loads((ds / shards.MANIFEST).read_text())
  manifest["splits"]["train"]["shards"][0] = name
  (ds / shards.MANIFEST).write_text(json.dumps(manifest))
  for read in (
      lambda: shards.split_paths(ds, "train"),
      lambda: dataset_reader.ShardReader(str(ds), "train"),
      lambda: list(dataset_reader.iter_records(str(ds), "train")),
  ):
    with pytest.raises(shards.DatasetError) as e:
      read()
    assert "\n" not in str(e.value) and repr(name) in str(e.value)
    assert "not a plain name inside the dataset folder" in str(e.value)
  code = cli.main(["--verify", str(ds)])
  _, err = capsys.readouterr()
  _one_line_error(code, err, repr(name), "not a plain name")


def test_a_split_name_leading_outside_the_dataset_is_refused(six, tmp_path, capsys):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  manifest = json.loads((ds / shards.MANIFEST).read_text())
  manifest["splits"]["../../x"] = manifest["splits"].pop("test")
  (ds / shards.MANIFEST).write_text(json.dumps(manifest))
  code = cli.main(["--verify", str(ds)])
  _, err = capsys.readouterr()
  _one_line_error(code, err, "'../../x-index.npz'", "not a plain name")


# ------------------------------------------------------------------ 8: WFDB channel names


BIDMC_NAMES = ["RESP,", "PLETH,", "V,", "AVR,", "II,"]


def _write_wfdb(d: Path, name: str, sig_names: list[str]) -> Path:
  import wfdb

  d.mkdir(parents=True, exist_ok=True)
  ecg, ppg = _signals(40)
  resp = np.sin(2 * np.pi * 0.25 * np.arange(len(ecg)) / FS)
  columns = {"RESP": resp, "PLETH": ppg, "V": 0.5 * ecg, "AVR": -ecg, "II": ecg}
  sig = np.stack([columns[wfdb_source.channel_key(n)] for n in sig_names], 1)
  wfdb.wrsamp(
      name,
      fs=FS,
      units=["mV"] * len(sig_names),
      sig_name=sig_names,
      p_signal=sig,
      fmt=["16"] * len(sig_names),
      write_dir=str(d),
  )
  return d / name


def test_channel_key_strips_whitespace_and_trailing_punctuation():
  assert [wfdb_source.channel_key(n) for n in (" PLETH, ", "II,", "aVR;", "ii .")] == [
      "PLETH",
      "II",
      "AVR",
      "II",
  ]
  assert wfdb_source.channel_keys("PLETH, pleth;,  ,II") == ["PLETH", "PLETH", "II"]


def test_bidmc_style_channel_names_are_read_like_plain_ones(tmp_path, capsys):
  bidmc = _write_wfdb(tmp_path / "bidmc", "bidmc01", BIDMC_NAMES)
  plain = _write_wfdb(tmp_path / "plain", "bidmc01", [n.rstrip(",") for n in BIDMC_NAMES])
  assert "PLETH," in (bidmc.with_suffix(".hea")).read_text()  # written as BIDMC writes it
  [rec] = wfdb_source.read(str(bidmc), {})
  [ref] = wfdb_source.read(str(plain), {})
  assert sorted(rec.signals) == ["ecg", "ppg"]
  for m in ("ecg", "ppg"):  # II (first preferred lead) and PLETH, as for plain names
    np.testing.assert_array_equal(rec.signals[m][0], ref.signals[m][0])
  # a user's own names match with or without the punctuation
  [rec] = wfdb_source.read(str(bidmc), {"wfdb_ecg_leads": "avr", "wfdb_ppg_names": " Pleth "})
  np.testing.assert_allclose(rec.signals["ecg"][0], -ref.signals["ecg"][0], atol=1e-3)
  # prepare (the CLI) and raw-record embedding (the same reader) keep its windows
  code = cli.main(
      [
          "--source",
          "wfdb",
          "--input",
          str(tmp_path / "bidmc"),
          "--output",
          str(tmp_path / "ds"),
          "--no-progress",
          "--workers",
          "1",
          "--test-frac",
          "0",
          "--val-frac",
          "0",
      ]
  )
  out, err = capsys.readouterr()
  assert code == 0, err
  assert shards.read_manifest(tmp_path / "ds")["splits"]["train"]["records"] == 4
  from xmae_jax.evaluation import embed as embed_lib
  from xmae_jax.evaluation import encoder as encoder_lib

  segs = embed_lib.recording_segments(
      bidmc, "wfdb", ("ppg", "ecg"), contract=encoder_lib.Contract()
  )
  ref_segs = embed_lib.recording_segments(
      plain, "wfdb", ("ppg", "ecg"), contract=encoder_lib.Contract()
  )
  assert len(segs) == 4
  for m in ("ppg", "ecg"):
    np.testing.assert_array_equal(segs.signals[m], ref_segs.signals[m])


# ------------------------------------------------------------------ 9: a request too large


def test_a_huge_synthetic_request_is_refused_before_any_work(tmp_path, capsys):
  out = tmp_path / "big"
  t0 = time.perf_counter()
  code = cli.main(
      [
          "--source",
          "synthetic",
          "--num-subjects",
          "100000000000",
          "--output",
          str(out),
          "--no-progress",
      ]
  )
  _, err = capsys.readouterr()
  _one_line_error(code, err, "--num-subjects 100000000000", "windows", str(out))
  assert time.perf_counter() - t0 < 10 and not out.exists()
  code = cli.main(
      [
          "--source",
          "synthetic",
          "--num-subjects",
          "1",
          "--minutes-per-subject",
          "1e12",
          "--output",
          str(out),
          "--no-progress",
      ]
  )
  _, err = capsys.readouterr()
  _one_line_error(code, err, "--minutes-per-subject 1e+12")
  code = cli.main(
      [
          "--source",
          "synthetic",
          "--minutes-per-subject",
          "inf",
          "--output",
          str(out),
          "--no-progress",
      ]
  )
  _, err = capsys.readouterr()
  _one_line_error(code, err, "--minutes-per-subject inf is not a finite number")
  assert not out.exists()


def test_memory_limits_are_checked_up_front(tmp_path, monkeypatch):
  monkeypatch.setattr(prepare_units, "available_memory", lambda: 10_000_000)  # 10 MB available
  with pytest.raises(prepare_rules.PrepareError) as e:  # bookkeeping of 5000 subjects: ~25 MB
    _synthetic(tmp_path / "a", options={"num_subjects": 5000})
  assert "memory" in str(e.value) and "10.0 MB available" in str(e.value)
  with pytest.raises(prepare_rules.PrepareError) as e:  # one subject of 10 h at 125 Hz: ~1.2 GB
    _synthetic(tmp_path / "b", options={"num_subjects": 1, "minutes_per_subject": 600})
  assert "one input of 36000 s at 125 Hz" in str(e.value)
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_shards_are_written_from_the_cache_one_unit_at_a_time(tmp_path, monkeypatch):
  """The records of every unit are not held together: at most one unit's cache is in memory
  while the shards are written (and the dataset is the one written before)."""
  first = _synthetic(tmp_path / "a", records_per_shard=4)
  live, peak = [0], [0]
  real = prepare_local.read_cache

  class Tracked(dict):

    def __del__(self):
      live[0] -= 1

  def tracked(path, unit):
    live[0] += 1
    peak[0] = max(peak[0], live[0])
    return Tracked(real(path, unit))

  monkeypatch.setattr(prepare_local, "read_cache", tracked)
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  second = _synthetic(tmp_path / "b", records_per_shard=4)
  assert second["resumed_units"] == 6 and peak[0] == 1
  assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
  assert first["records_per_split"] == second["records_per_split"]


# ------------------------------------------------------------------ 11: one run per output


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from xmae_jax.data import prepare_local
    lock = prepare_local.lock_output(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_second_prepare_on_a_busy_output_is_refused_naming_the_holder(six, tmp_path, capsys):
  ds = tmp_path / "ds"
  shutil.copytree(six, ds)
  before = _shard_bytes(ds)
  proc = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(ds)],
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env={**os.environ, "PYTHONPATH": str(REPO)},
  )
  try:
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    code = cli.main(
        [
            "--source",
            "synthetic",
            "--num-subjects",
            "6",
            "--minutes-per-subject",
            "0.5",
            "--output",
            str(ds),
            "--no-progress",
            "--workers",
            "1",
            "--overwrite",
            "--seed",
            "5",
        ]
    )
    _, err = capsys.readouterr()
    _one_line_error(
        code,
        err,
        f"output {ds} is in use by pid {proc.pid} on host " f"{socket.gethostname()}",
        "choose another --output",
    )
    assert _shard_bytes(ds) == before
  finally:
    proc.kill()  # a crash: the kernel frees the lock
    proc.wait()
  report = _synthetic(ds, overwrite=True, seed=5)
  assert report["segments_kept"] == 18


def test_the_workdir_lock_is_the_same_lock():
  from xmae_jax import locks
  from xmae_jax.training import workdir_lock

  assert issubclass(workdir_lock.WorkdirBusyError, locks.FolderBusyError)
  assert workdir_lock.WorkdirLock is locks.FolderLock


# ------------------------------------------------------------------ 12: --modalities any


@pytest.mark.parametrize("ppg_fault", ["flat", "nan"])
def test_any_keeps_the_ecg_windows_of_a_recording_with_a_dead_ppg(tmp_path, ppg_fault):
  ecg, _ = _signals(60)
  dead = np.full_like(ecg, 2.5 if ppg_fault == "flat" else np.nan)
  config = pp.PreprocessConfig(modalities="any")
  segs, stats = pp.segment_recording({"ecg": (ecg, FS), "ppg": (dead, FS)}, config)
  alone, _ = pp.segment_recording({"ecg": (ecg, FS)}, config)
  assert len(segs) == len(alone) == 6
  for s, a in zip(segs, alone):
    assert sorted(s.signals) == ["ecg"] and s.start_s == a.start_s
    np.testing.assert_array_equal(s.signals["ecg"], a.signals["ecg"])
  # through prepare: a file with the dead PPG keeps its ECG windows
  src = tmp_path / "in"
  src.mkdir()
  np.savez(src / "rec.npz", ecg=ecg, ppg=dead, fs=float(FS))
  report = prep.prepare_dataset(
      "npz", src, tmp_path / "ds", progress=False, log=None, config=config, test_frac=0, val_frac=0
  )
  assert report["segments_kept"] == 6
  index = np.load(tmp_path / "ds" / "train-index.npz")
  assert index["has_ecg"].all() and not index["has_ppg"].any()


def test_any_still_cuts_what_every_modality_lacks():
  ecg, ppg = _signals(60)
  ecg[: 25 * FS] = np.nan  # the first 25 s: no ECG, but a PPG
  ppg[20 * FS :] = 1.0  # from 20 s on: no PPG, but an ECG after 25 s
  segs, stats = pp.segment_recording(
      {"ecg": (ecg, FS), "ppg": (ppg, FS)}, pp.PreprocessConfig(modalities="any")
  )
  # 0-10 and 10-20 s with PPG only; 20-25 s has neither, so windows restart at 25 s: ECG only
  assert [(s.start_s, sorted(s.signals)) for s in segs] == [
      (0.0, ["ppg"]),
      (10.0, ["ppg"]),
      (25.0, ["ecg"]),
      (35.0, ["ecg"]),
      (45.0, ["ecg"]),
  ]


# ------------------------------------------------------------------ 15: Beam options


@pytest.mark.parametrize(
    "options,needle",
    [
        (
            "--direct_num_workers=-3 --direct_running_mode=multi_processing",
            "--direct_num_workers=-3 must be >= 0",
        ),
        ("--direct_num_workers=abc", "invalid int value: 'abc'"),
        ("--num_workers=-1", "--num_workers=-1 must be >= 0"),
        ("'unbalanced", "No closing quotation"),
    ],
)
def test_bad_beam_options_are_one_line_before_any_work(tmp_path, capsys, options, needle):
  pytest.importorskip("apache_beam")
  out = tmp_path / "b"
  code = cli.main(
      [
          "--runner",
          "beam",
          f"--beam-options={options}",
          "--source",
          "synthetic",
          "--num-subjects",
          "3",
          "--output",
          str(out),
          "--no-progress",
      ]
  )
  _, err = capsys.readouterr()
  err = "\n".join(l for l in err.splitlines() if not l.startswith("WARNING:"))  # Beam's import
  _one_line_error(code, err, "--beam-options", needle)
  assert not out.exists()


# ------------------------------------------------------------------ 20: SIGTERM, SIGINT


def _forty(out: Path, workers: int = 1) -> list[str]:
  return [
      "--source",
      "synthetic",
      "--num-subjects",
      "40",
      "--minutes-per-subject",
      "0.25",
      "--workers",
      str(workers),
      "--output",
      str(out),
      "--no-progress",
  ]


def _prepare_process(out: Path, *, group: bool) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "xmae_jax.cli.xmae_prepare", *_forty(out, workers=2)],
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      start_new_session=group,
      env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"},
  )


def _when_some_cached(out: Path, proc: subprocess.Popen, timeout: float = 120):
  end = time.time() + timeout
  while time.time() < end and proc.poll() is None:
    if len(list(out.glob(f"{prepare_rules.WORK}/*/*.msgpack"))) >= 2:
      return
    time.sleep(0.1)
  raise AssertionError(f"no unit cached in {timeout} s: {proc.poll()}")


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
  """The dataset of an uninterrupted run."""
  out = tmp_path_factory.mktemp("forty") / "ds"
  cli.run(_forty(out))
  return out


@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_to_a_two_worker_prepare_is_one_line_and_it_resumes(tmp_path, forty, sig, group):
  out = tmp_path / "ds"
  proc = _prepare_process(out, group=group)
  _when_some_cached(out, proc)
  if group:  # Ctrl-C: the whole process group, the workers included
    os.killpg(proc.pid, sig)
  else:  # kill PID: the parent alone
    proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  time.sleep(1)  # any worker left behind would write its traceback by now
  lines = err.strip().splitlines()
  assert proc.returncode == 128 + sig and len(lines) == 1, err
  assert lines[0].startswith(f"xmae-prepare: error: interrupted by {signal.Signals(sig).name}: ")
  assert "of 40 inputs done" in lines[0] and "run the same command again to resume" in lines[0]
  # the rerun resumes from the cache and gives the dataset an uninterrupted run gives
  cached = len(list(out.glob(f"{prepare_rules.WORK}/*/*.msgpack")))
  resumed = cli.run(_forty(out))
  assert resumed["resumed_units"] == cached >= 2 and not list(out.rglob("*.tmp*"))
  assert all(f["status"] == "ok" for f in resumed["per_file"])
  assert _shard_bytes(out) == _shard_bytes(forty)
  assert (
      resumed["records_per_split"]
      == json.loads((forty / prepare_report.REPORT_JSON).read_text())["records_per_split"]
  )
