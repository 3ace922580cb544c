"""The PTT/HR probe report (xmae_jax.evaluation.ptt_hr_report) on embeddings made in the test:
one encoder whose embedding carries PTT and heart rate linearly, one of noise. The report must
find the first and not the second, its shuffled-target control must find nothing in either, and
the paired difference must credit the first; the Markdown, JSON and chart say so."""

import json

import numpy as np
import pytest

from xmae_jax.evaluation import compare as compare_lib
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import ptt_hr_report
from xmae_jax.evaluation import report as report_lib

PROBE = probe_config.LinearProbeConfig(outer_folds=4, inner_folds=3, seed=0, n_bootstrap=200)


def _segments(n_subjects=16, per_subject=5, seed=0):
  """(subject ids, segment ids, hr in bpm, ptt in ms): PTT mostly a subject's own, HR per
  segment."""
  rng = np.random.default_rng(seed)
  subjects = np.repeat([f"s{s:02d}" for s in range(n_subjects)], per_subject)
  segments = [f"{s}/{k}" for s, k in zip(subjects, np.tile(np.arange(per_subject), n_subjects))]
  hr = rng.uniform(50, 110, len(subjects))
  ptt = np.repeat(rng.uniform(150, 300, n_subjects), per_subject) + rng.normal(0, 5, len(subjects))
  return subjects, segments, hr, ptt


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  """The report of `readable` (hr and ptt in its embedding) against the baseline `noise`."""
  out = tmp_path_factory.mktemp("timing")
  subjects, segments, hr, ptt = _segments()
  rng = np.random.default_rng(1)
  noise = rng.normal(size=(len(hr), 8))
  readable = np.concatenate(
      [((hr - 80) / 20)[:, None], ((ptt - 225) / 50)[:, None], rng.normal(size=(len(hr), 6))],
      axis=1,
  )
  readable[:, :2] += rng.normal(0, 0.05, (len(hr), 2))
  for name, x in (("readable", readable), ("noise", noise)):
    embed_lib.save_embeddings(
        out / "embeddings" / f"{name}.npz", x, subjects, segments, meta={"hr": hr, "ptt_ms": ptt}
    )
  specs = [compare_lib.EncoderSpec(name="readable"), compare_lib.EncoderSpec(name="noise")]
  # reuse_embeddings: the files above stand for what each encoder embedded.
  result = ptt_hr_report.timing_report(
      specs, out / "no-data", out, baseline="noise", linear_cfg=PROBE, reuse_embeddings=True
  )
  return result, out


def _r2(rows, encoder, task):
  (row,) = [r for r in rows if r["encoder"] == encoder and r["task"] == task]
  return row["metrics"]["r2"]["value"]


def test_probe_reads_ptt_and_hr_only_where_the_embedding_carries_them(report):
  result, _ = report
  assert result["tasks"] == ["ptt", "hr"] and result["baseline"] == "noise"
  rows = result["results"]
  assert {(r["encoder"], r["task"]) for r in rows} == {
      (e, t) for e in ("readable", "noise") for t in ("ptt", "hr")
  }
  for task in ("ptt", "hr"):
    assert _r2(rows, "readable", task) > 0.9, task
    assert _r2(rows, "noise", task) < 0.3, task
  assert all("predictions" not in r for r in rows)  # arrays never go into the report


def test_shuffled_target_control_finds_nothing_even_in_a_readable_embedding(report):
  result, _ = report
  controls = result["controls"]
  assert {(c["encoder"], c["task"]) for c in controls} == {
      (e, t) for e in ("readable", "noise") for t in ("ptt", "hr")
  }
  for task in ("ptt", "hr"):
    assert _r2(controls, "readable", task) < 0.3, task


def test_paired_difference_credits_the_readable_encoder_over_the_baseline(report):
  result, _ = report
  diffs = result["differences"]
  assert {(d["encoder"], d["task"]) for d in diffs} == {("readable", "ptt"), ("readable", "hr")}
  for d in diffs:
    r2 = d["difference"]["r2"]
    assert r2["value"] > 0.5 and r2["ci95"][0] > 0, d["task"]


def test_report_files_state_the_results(report):
  result, out = report
  assert json.loads((out / "timing.json").read_text())["differences"] == json.loads(
      json.dumps(result["differences"])
  )
  md = (out / "timing.md").read_text()
  assert "## ptt (ms)" in md and "## hr (bpm)" in md
  assert "## Paired differences to noise" in md
  readable_rows = [line for line in md.splitlines() if line.startswith("| readable |")]
  # one row per task table (with its R² as the JSON has it), one per paired difference
  assert len(readable_rows) == 4
  for r in result["results"]:
    if r["encoder"] == "readable":
      assert any(
          report_lib.format_metric(r["metrics"]["r2"]) in line for line in readable_rows[:2]
      ), r["task"]
  assert all(line.startswith("| readable | noise |") for line in readable_rows[2:])
  assert (out / "timing.png").stat().st_size > 1000


def test_shuffled_control_permutes_the_targets(tmp_path):
  """The control on an embedding that IS the target: the probe reads it perfectly, the control
  (same embedding, targets permuted) does not."""
  subjects, segments, hr, _ = _segments(seed=2)
  path = embed_lib.save_embeddings(
      tmp_path / "e.npz", hr[:, None], subjects, segments, meta={"hr": hr}
  )
  arrays = embed_lib.load_embeddings(path)
  control = ptt_hr_report.shuffled_control(arrays, "hr", PROBE)
  probed = probe_lib.linear_probe(
      arrays["embeddings"], hr, arrays["subject_ids"], "regression", PROBE
  )
  assert probed["metrics"]["r2"]["value"] > 0.99
  assert control["metrics"]["r2"]["value"] < 0.3
  assert control["n_segments"] == len(hr)


def test_unknown_baseline_is_refused_before_any_work(tmp_path):
  with pytest.raises(compare_lib.CompareError, match="baseline 'zzz' is not one of the encoders"):
    ptt_hr_report.timing_report(
        [compare_lib.EncoderSpec(name="a")], tmp_path, tmp_path / "o", baseline="zzz"
    )
  assert not (tmp_path / "o").exists()
