"""xmae-timing end to end on a dataset written here: two randomly initialized encoders of one
architecture and seed (so the same embeddings), PTT and HR probed on identical folds, the
report printed and written; --reuse-embeddings and --no-controls; a bad baseline is one line."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import datasets
from xmae_jax.cli import xmae_timing
from xmae_jax.data import record as record_lib

REPO = Path(__file__).resolve().parents[2]
RANDOM = f"{REPO / 'configs' / 'xmae.py'}:tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """10 subjects x 3 segments of pulse-like PPG at the subject's heart rate, with its PTT."""
  rng = np.random.default_rng(0)
  t = np.arange(1000) / 100.0
  records = []
  for s in range(10):
    hr, ptt = rng.uniform(50, 110), rng.uniform(150, 300)
    for k in range(3):
      ppg = np.sin(2 * np.pi * hr / 60 * t + rng.uniform(0, 6)) ** 3 + 0.05 * rng.normal(size=1000)
      ppg = 2 * (ppg - ppg.min()) / np.ptp(ppg) - 1
      records.append(
          record_lib.Record(
              subject_id=f"s{s:02d}",
              segment_id=f"s{s:02d}/{k}",
              source="test",
              ppg=ppg,
              ecg=ppg[::-1].copy(),
              quality_ppg=0.95,
              quality_ecg=0.95,
              meta={"hr": hr, "ptt_ms": ptt + rng.normal(0, 3)},
          )
      )
  return datasets.write_dataset(tmp_path_factory.mktemp("data"), {"test": records})


def _run(dataset, out, *extra):
  return xmae_timing.main(
      [
          "--data",
          str(dataset),
          "--output-dir",
          str(out),
          "--random",
          f"a={RANDOM}",
          "--random",
          f"b={RANDOM}",
          "--folds",
          "3",
          "--bootstrap",
          "20",
          *extra,
      ]
  )


def test_report_is_printed_and_written_for_every_encoder_and_task(dataset, tmp_path, capsys):
  out = tmp_path / "timing"
  assert _run(dataset, out, "--baseline", "a") == 0
  printed = capsys.readouterr().out
  md = (out / "timing.md").read_text()
  assert md in printed
  assert "## ptt (ms)" in md and "## hr (bpm)" in md and "## Paired differences to a" in md
  report = json.loads((out / "timing.json").read_text())
  assert report["tasks"] == ["ptt", "hr"] and report["baseline"] == "a"
  by = {(r["encoder"], r["task"]): r for r in report["results"]}
  assert set(by) == {(e, t) for e in ("a", "b") for t in ("ptt", "hr")}
  for task in ("ptt", "hr"):
    # same weights, same segments, same folds: the same scores
    assert by[("a", task)]["metrics"] == by[("b", task)]["metrics"]
    assert by[("a", task)]["n_segments"] == 30 and by[("a", task)]["n_subjects"] == 10
  assert {(c["encoder"], c["task"]) for c in report["controls"]} == set(by)
  d_ptt, d_hr = sorted(report["differences"], key=lambda d: d["task"] != "ptt")
  assert (d_ptt["encoder"], d_ptt["task"], d_hr["task"]) == ("b", "ptt", "hr")
  assert d_ptt["difference"]["r2"]["value"] == 0.0
  assert (out / "timing.png").stat().st_size > 1000
  assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["a.npz", "b.npz"]

  # A second report on the same embeddings, one task, no controls: nothing is embedded again.
  stamps = {p.name: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()}
  assert _run(dataset, out, "--reuse-embeddings", "--no-controls", "--task", "hr") == 0
  report = json.loads((out / "timing.json").read_text())
  assert report["tasks"] == ["hr"] and report["controls"] == [] and report["differences"] == []
  assert {p.name: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()} == stamps


def test_unknown_baseline_is_one_line_and_writes_nothing(dataset, tmp_path, capsys):
  out = tmp_path / "timing"
  assert _run(dataset, out, "--baseline", "zzz") == 1
  err = capsys.readouterr().err.strip()
  assert err == "xmae-timing: error: baseline 'zzz' is not one of the encoders"
  assert not out.exists()
