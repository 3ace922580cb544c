"""Single-modality retention: the paired subject-bootstrap of a ratio, and xmae-compare
--retention (M2AE's PPG-alone, ECG-alone and both-modality fingerprints of the same windows on
identical folds); M2AE's PPG-alone rows beside an xMAE encoder in xmae-compare --modality ppg."""

import json

import numpy as np
import pytest

from tests.helpers import datasets
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import tasks


def _groups(n_subjects=20, per_subject=5):
  return np.repeat(np.arange(n_subjects), per_subject).astype(str)


def test_ratio_of_a_known_ratio_and_its_difference_share_the_resamples():
  """Scores whose errors are exactly twice another's: MAE ratio 2 in every resample, and the
  difference MAE(a) - MAE(b) = MAE(b), whose paired CI is b's own subject-bootstrap CI."""
  rng = np.random.default_rng(0)
  groups = _groups()
  y = rng.normal(size=len(groups))
  err = rng.normal(size=len(groups)) * np.repeat(rng.uniform(0.2, 2.0, 20), 5)
  a, b = y + 2 * err, y + err
  ratio = probe_metrics.paired_statistic(
      y, a, b, groups, tasks.REGRESSION, combine="ratio", n_bootstrap=200, seed=4
  )
  assert ratio["mae"]["value"] == pytest.approx(2.0)
  assert ratio["mae"]["ci95"] == pytest.approx([2.0, 2.0])
  assert ratio["mae"]["share_above_1"] == 1.0
  diff = probe_metrics.paired_statistic(
      y, a, b, groups, tasks.REGRESSION, combine="difference", n_bootstrap=200, seed=4
  )
  own = probe_metrics.subject_bootstrap(y, b, groups, tasks.REGRESSION, n_bootstrap=200, seed=4)
  assert diff["mae"]["value"] == pytest.approx(np.mean(np.abs(err)))
  assert diff["mae"]["ci95"] == pytest.approx(list(own["mae"]))
  assert diff == probe_metrics.paired_difference(
      y, a, b, groups, tasks.REGRESSION, n_bootstrap=200, seed=4
  )
  # Pearson r does not change under an affine map of the predictions: ratio 1 in every resample.
  affine = probe_metrics.paired_statistic(
      y, 3 * b + 1, b, groups, tasks.REGRESSION, combine="ratio", n_bootstrap=50, seed=4
  )["pearson_r"]
  assert affine["value"] == pytest.approx(1.0) and affine["ci95"] == pytest.approx([1.0, 1.0])


def test_ratio_ci_is_the_percentile_interval_of_the_paired_ratios():
  """A classification pair with a ratio well below 1: the CI equals the ratios of the two AUROCs
  on the same subject resamples, computed by hand."""
  rng = np.random.default_rng(1)
  groups = _groups(30, 6)
  y = (rng.random(len(groups)) < 0.5).astype(float)
  strong = y + 0.6 * rng.normal(size=len(y))
  weak = y + 2.5 * rng.normal(size=len(y))
  out = probe_metrics.paired_statistic(
      y, weak, strong, groups, tasks.CLASSIFICATION, combine="ratio", n_bootstrap=300, seed=2
  )["auroc"]
  point = (
      probe_metrics.classification_metrics(y, weak)["auroc"]
      / probe_metrics.classification_metrics(y, strong)["auroc"]
  )
  assert out["value"] == pytest.approx(point) and out["value"] < 0.9
  by_hand = [
      probe_metrics.classification_metrics(y[r], weak[r])["auroc"]
      / probe_metrics.classification_metrics(y[r], strong[r])["auroc"]
      for r in probe_metrics.subject_resamples(groups, 300, 2)
  ]
  assert out["ci95"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])))
  assert out["ci95"][0] < point < out["ci95"][1] < 1.0
  with pytest.raises(probe_config.ProbeError, match="unknown combine 'quotient'"):
    probe_metrics.paired_statistic(
        y, weak, strong, groups, tasks.CLASSIFICATION, combine="quotient"
    )


def test_ratio_over_a_zero_metric_is_nan_not_an_error():
  groups = _groups(6, 4)
  y = np.tile([0.0, 1.0], 12)
  const = np.full(len(y), 0.5)  # constant predictions: Pearson r undefined
  out = probe_metrics.paired_statistic(
      y, y, const, groups, tasks.REGRESSION, combine="ratio", n_bootstrap=20, seed=0
  )
  assert np.isnan(out["pearson_r"]["value"]) and np.isnan(out["pearson_r"]["ci95"][0])
  assert out["mae"]["value"] == 0.0  # MAE(y, y) / MAE(y, 0.5)


# ---- xmae-compare --retention -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
  """12 subjects x 4 windows with PPG and ECG, plus 2 subjects x 3 windows with PPG only."""
  from xmae_jax.data import record as record_lib

  out = tmp_path_factory.mktemp("mixed")
  ppg, ecg = datasets.paired_windows(n=54, seed=11)
  rng = np.random.default_rng(3)
  splits = {"train": [], "test": []}
  for i in range(54):
    s = i // 4 if i < 48 else 12 + (i - 48) // 3
    both = i < 48
    rec = record_lib.Record(
        subject_id=f"s{s:02d}",
        segment_id=f"s{s:02d}/{i}",
        source="test",
        ppg=ppg[i],
        ecg=ecg[i] if both else None,
        quality_ppg=0.9,
        quality_ecg=0.9 if both else float("nan"),
        meta={"hr": 50.0 + 4 * s + rng.normal()},
        labels={"pvc": int(s % 2 == 0)},
    )
    splits["test" if s in (3, 7, 12) else "train"].append(rec)
  return datasets.write_dataset(out, splits)


def test_compare_retention_table(joint_package, tiny_package, mixed_dataset, tmp_path, capsys):
  from xmae_jax.cli import xmae_compare

  out = tmp_path / "cmp"
  assert (
      xmae_compare.main(
          [
              "--data",
              str(mixed_dataset),
              "--output-dir",
              str(out),
              "--modalities",
              "ppg",
              "--encoder",
              f"m2ae={joint_package}",
              "--encoder",
              f"xmae={tiny_package}",
              "--task",
              "hr",
              "--task",
              "pvc",
              "--folds",
              "3",
              "--inner-folds",
              "2",
              "--bootstrap",
              "60",
              "--retention",
          ]
      )
      == 0
  )
  printed = capsys.readouterr().out
  results = json.loads((out / "results.json").read_text())
  assert {r["encoder"] for r in results} == {"m2ae", "xmae", "m2ae:ppg", "m2ae:ecg", "m2ae:ppg+ecg"}
  by = {(r["encoder"], r["task"]): r for r in results}
  # The plain comparison embeds every PPG window; the retention, the windows with both.
  assert by[("m2ae", "hr")]["n_segments"] == by[("xmae", "hr")]["n_segments"] == 54
  three = ("m2ae:ppg", "m2ae:ecg", "m2ae:ppg+ecg")
  for task in ("hr", "pvc"):
    runs = [by[(name, task)] for name in three]
    assert {(r["n_segments"], r["n_subjects"]) for r in runs} == {(48, 12)}
    # Identical folds: the same test sizes and subjects per fold for all three.
    assert (
        len({json.dumps([(f["n_test"], f["n_test_subjects"]) for f in r["folds"]]) for r in runs})
        == 1
    )
  assert by[("m2ae:ppg", "hr")]["metrics"] != by[("m2ae:ecg", "hr")]["metrics"]

  # Identical windows: the three files hold the same segments, in one order, and each is the
  # package's fingerprint of the stored windows from its inputs.
  enc = encoder_lib.load_encoder(joint_package)
  stored = datasets.stored_windows(mixed_dataset)
  files = {
      m: embed_lib.load_embeddings(out / "embeddings" / "retention" / "m2ae" / f"{m}.npz")
      for m in ("ppg", "ecg", "ppg+ecg")
  }
  ids = list(files["ppg"]["segment_ids"])
  assert len(ids) == 48 and all(list(f["segment_ids"]) == ids for f in files.values())
  assert all("ecg" in stored[i] for i in ids)
  windows = {m: np.stack([stored[i][m] for i in ids]) for m in ("ppg", "ecg")}
  np.testing.assert_allclose(
      files["ppg"]["embeddings"], enc.embed_prepared(ppg=windows["ppg"]), atol=1e-5
  )
  np.testing.assert_allclose(
      files["ecg"]["embeddings"], enc.embed_prepared(ecg=windows["ecg"]), atol=1e-5
  )
  np.testing.assert_allclose(
      files["ppg+ecg"]["embeddings"], enc.embed_prepared(**windows), atol=1e-5
  )
  assert files["ecg"]["info"]["modalities"] == ["ecg"]
  # --modality ppg gives the M2AE row its PPG-alone fingerprint: the same numbers.
  plain = embed_lib.load_embeddings(out / "embeddings" / "m2ae.npz")
  rows = [list(plain["segment_ids"]).index(i) for i in ids]
  np.testing.assert_allclose(plain["embeddings"][rows], files["ppg"]["embeddings"], atol=1e-5)

  retention = json.loads((out / "retention.json").read_text())
  assert set(retention["skipped"]) == {"xmae"}
  assert "holds the ppg encoder, not ppg+ecg" in retention["skipped"]["xmae"]
  rows = {r["task"]: r for r in retention["rows"]}
  assert set(rows) == {"hr", "pvc"} and rows["hr"]["metric"] == "r2"
  assert rows["pvc"]["metric"] == "auroc"
  for task, r in rows.items():
    assert r["encoder"] == "m2ae" and r["n_segments"] == 48
    assert set(r["values"]) == {"ppg", "ecg", "ppg+ecg"}
    assert set(r["ratio"]) == set(r["difference"]) == {"ppg", "ecg"}
    for one in ("ppg", "ecg"):
      values = {k: by[(f"m2ae:{k}", task)]["metrics"] for k in (one, "ppg+ecg")}
      assert r["values"][one] == values[one]
      for metric in values[one]:
        a, b = values[one][metric]["value"], values["ppg+ecg"][metric]["value"]
        assert r["ratio"][one][metric]["value"] == pytest.approx(a / b)
        assert r["difference"][one][metric]["value"] == pytest.approx(a - b)
        lo, hi = r["ratio"][one][metric]["ci95"]
        assert lo <= hi
  table = (out / "table.md").read_text()
  assert table in printed and "## Single-modality retention" in table
  assert (
      "| encoder | task | metric | segments | subjects | PPG alone | ECG alone | both | "
      "PPG / both | ECG / both | PPG − both | ECG − both |"
  ) in table
  assert "| m2ae | hr | r2 | 48 | 12 |" in table and "| m2ae | pvc | auroc | 48 | 12 |" in table
  assert "* xmae: no retention (package" in table and "read the difference there" in table
  assert "| m2ae:ppg+ecg |" in table  # the three fingerprints in the every-metric table


def test_retention_without_an_encoder_taking_both_is_one_line(
    tiny_package, tiny_workdir, mixed_dataset, tmp_path, capsys
):
  from xmae_jax.cli import xmae_compare

  assert (
      xmae_compare.main(
          [
              "--data",
              str(mixed_dataset),
              "--output-dir",
              str(tmp_path / "o"),
              "--encoder",
              f"xmae={tiny_package}",
              "--encoder",
              f"run={tiny_workdir}",
              "--task",
              "hr",
              "--retention",
          ]
      )
      == 1
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("xmae-compare: error: retention: no encoder takes both ppg and ecg (xmae: ")
  assert "run: model XMAE has no joint ppg+ecg fingerprint" in err
  assert not (tmp_path / "o" / "results.json").exists()
