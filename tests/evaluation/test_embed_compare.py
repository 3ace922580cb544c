"""xmae-embed on a dataset, a WFDB record and a CSV file; xmae-probe and xmae-compare end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import datasets
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards
from xmae_jax.evaluation import embed as embed_lib

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """12 subjects x 4 segments of pulse-like PPG whose rate is the subject's heart rate."""
  out = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  t = np.arange(1000) / 100.0
  splits = {"train": [], "test": []}
  for s in range(12):
    hr = rng.uniform(50, 110)
    for k in range(4):
      ppg = np.sin(2 * np.pi * hr / 60 * t + rng.uniform(0, 6)) ** 3 + 0.05 * rng.normal(size=1000)
      ppg = 2 * (ppg - ppg.min()) / np.ptp(ppg) - 1
      rec = record_lib.Record(
          subject_id=f"s{s:02d}",
          segment_id=f"s{s:02d}/{k}",
          source="test",
          ppg=ppg,
          ecg=ppg[::-1].copy(),
          quality_ppg=0.95,
          quality_ecg=0.95,
          meta={"hr": hr, "age": 30.0 + 3 * s, "sbp": 110 + 3 * s, "dbp": 70 + s},
          labels={"pvc": int(s % 3 == 0)},
      )
      splits["test" if s >= 9 else "train"].append(rec)
  return datasets.write_dataset(out, splits)


def test_embed_dataset_and_probe(tiny_package, dataset, tmp_path, capsys):
  from xmae_jax.cli import xmae_embed as embed
  from xmae_jax.cli import xmae_probe as probe

  out = tmp_path / "emb.npz"
  assert (
      embed.main(["--encoder", str(tiny_package), "--input", str(dataset), "--output", str(out)])
      == 0
  )
  a = embed_lib.load_embeddings(out)
  assert a["embeddings"].shape == (48, 32) and a["embeddings"].dtype == np.float32
  assert set(a["split"]) == {"train", "test"}
  assert len(set(a["subject_ids"])) == 12 and len(set(a["segment_ids"])) == 48
  # The file's rows line up with the records: meta and labels travel with their segment.
  row = list(a["segment_ids"]).index("s04/2")
  assert a["meta.age"][row] == 42.0 and a["label.pvc"][row] == 0
  # Embeddings equal embedding the stored waveforms directly.
  from array_record.python import array_record_module as arm

  import xmae_jax

  enc = xmae_jax.load_encoder(tiny_package)
  paths, _ = shards.split_paths(dataset, "train")
  reader = arm.ArrayRecordReader(paths[0], "readahead_buffer_size:0")
  first = record_lib.decode(reader.read([0])[0])
  reader.close()
  row = list(a["segment_ids"]).index(first.segment_id)
  direct = enc.embed(first.ppg[None].astype(np.float32), fs=100)
  np.testing.assert_allclose(direct[0], a["embeddings"][row], rtol=1e-4, atol=1e-5)
  test_only = tmp_path / "test.npz"
  assert (
      embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(dataset),
              "--output",
              str(test_only),
              "--split",
              "test",
          ]
      )
      == 0
  )
  assert len(embed_lib.load_embeddings(test_only)["embeddings"]) == 12
  capsys.readouterr()
  md, js = tmp_path / "p.md", tmp_path / "p.json"
  assert (
      probe.main(
          [
              "--embeddings",
              str(out),
              "--task",
              "hr",
              "--task",
              "hypertension:clinical",
              "--folds",
              "3",
              "--bootstrap",
              "50",
              "--output-md",
              str(md),
              "--output-json",
              str(js),
          ]
      )
      == 0
  )
  results = json.loads(js.read_text())
  assert [r["task"] for r in results] == ["hr", "hypertension:clinical"]
  assert results[0]["n_subjects"] == 12 and "ci95" in results[0]["metrics"]["mae"]
  assert "| hr | linear |" in md.read_text()
  # Unknown task and a missing field: one clear line, exit 1.
  assert probe.main(["--embeddings", str(out), "--task", "ptt"]) == 1
  assert "carry no ptt_ms" in capsys.readouterr().err


def test_embed_wfdb_record_and_csv(tiny_package, physionet_dir, tmp_path):
  from xmae_jax.cli import xmae_embed as embed

  out = tmp_path / "wfdb.npz"
  assert (
      embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(physionet_dir / "a103l"),
              "--output",
              str(out),
          ]
      )
      == 0
  )
  a = embed_lib.load_embeddings(out)
  assert 25 <= len(a["embeddings"]) <= 33  # 330 s at 250 Hz -> up to 33 windows
  assert np.all(np.isfinite(a["embeddings"]))
  # CSV: 25 s of PPG at 125 Hz -> 2 windows.
  csv = tmp_path / "one.csv"
  t = np.arange(25 * 125) / 125
  ppg = np.sin(2 * np.pi * 1.2 * t) ** 2
  csv.write_text("ppg\n" + "\n".join(f"{v:.5f}" for v in ppg))
  out_csv = tmp_path / "csv.npz"
  assert (
      embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(csv),
              "--output",
              str(out_csv),
              "--fs",
              "125",
          ]
      )
      == 0
  )
  assert len(embed_lib.load_embeddings(out_csv)["embeddings"]) == 2


def test_embed_bad_inputs(tiny_package, tmp_path, capsys):
  from xmae_jax.cli import xmae_embed as embed

  empty = tmp_path / "empty.csv"
  empty.write_text("")
  assert (
      embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(empty),
              "--output",
              str(tmp_path / "o.npz"),
              "--fs",
              "125",
          ]
      )
      == 1
  )
  assert "empty" in capsys.readouterr().err
  assert (
      embed.main(
          [
              "--encoder",
              str(tmp_path / "nope"),
              "--input",
              str(empty),
              "--output",
              str(tmp_path / "o.npz"),
          ]
      )
      == 1
  )
  assert "does not exist" in capsys.readouterr().err
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"")
  with pytest.raises(embed_lib.EmbeddingsError, match="empty"):
    embed_lib.load_embeddings(bad)
  assert not (tmp_path / "o.npz").exists()


def test_compare_same_splits_table_and_chart(tiny_package, tiny_workdir, dataset, tmp_path):
  from xmae_jax.cli import xmae_compare as compare

  out = tmp_path / "cmp"
  rc = compare.main(
      [
          "--data",
          str(dataset),
          "--output-dir",
          str(out),
          "--encoder",
          f"pkg={tiny_package}",
          "--encoder",
          f"workdir={tiny_workdir}",
          "--random",
          f"random={REPO / 'configs' / 'xmae.py'}:tiny",
          "--random-seed",
          "5",
          "--task",
          "hr",
          "--task",
          "pvc",
          "--folds",
          "3",
          "--bootstrap",
          "50",
          "--baseline",
          "random",
      ]
  )
  assert rc == 0
  results = json.loads((out / "results.json").read_text())
  assert {r["encoder"] for r in results} == {"pkg", "workdir", "random"}
  by = {(r["encoder"], r["task"]): r for r in results}
  # The package and the workdir hold the same weights: identical scores on identical folds.
  assert by[("pkg", "hr")]["metrics"] == by[("workdir", "hr")]["metrics"]
  assert by[("pkg", "hr")]["metrics"] != by[("random", "hr")]["metrics"]
  table = (out / "table.md").read_text()
  assert "| hr | r2 |" in table and "Paired differences to random" in table
  diffs = json.loads((out / "differences.json").read_text())
  assert {d["encoder"] for d in diffs} == {"pkg", "workdir"}
  assert (out / "comparison.png").stat().st_size > 1000
  assert compare.main(["--data", str(dataset), "--output-dir", str(out), "--encoder", "bad"]) == 1
