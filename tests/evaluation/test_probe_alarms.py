"""ICU-style probe tasks on synthetic embeddings: multiclass alarm type, alarm truth, and
HR/ABP targets with many unknown windows, through both protocols, paired differences, the
report and xmae-probe."""

import numpy as np
import pytest
from sklearn import metrics as skm

from xmae_jax.cli import xmae_probe
from xmae_jax.evaluation import compare
from xmae_jax.evaluation import embed
from xmae_jax.evaluation import probe
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import report
from xmae_jax.evaluation import tasks

FAST = probe_config.LinearProbeConfig(n_bootstrap=200, c_grid=(0.01, 1.0), alpha_grid=(1.0, 100.0))
TYPES = [
    "Ventricular_Tachycardia",
    "Asystole",
    "Bradycardia",
    "Tachycardia",
    "Ventricular_Flutter_Fib",
]
SORTED_TYPES = sorted(TYPES)


def _records(n_records=40, windows=8, dim=12, seed=0, separation=3.0):
  """Records (= subjects) with one alarm each; windows end 70, 60, ..., 0 s before the alarm.

  Features 0-4 carry the alarm type (one-hot times `separation`), feature 5 the alarm's truth,
  feature 6 the heart rate, each plus noise; the rest is noise plus a per-record offset (subject
  identity, no signal)."""
  rng = np.random.default_rng(seed)
  groups = np.repeat([f"rec{i:03d}" for i in range(n_records)], windows)
  type_id = np.repeat(np.arange(n_records) % len(TYPES), windows)
  alarm_type = np.array(TYPES)[type_id]
  truth = np.repeat(rng.integers(0, 2, n_records), windows).astype(float)
  before = np.tile(np.arange(windows - 1, -1, -1) * 10.0, n_records)
  hr = 60 + 40 * rng.random(len(groups))
  x = rng.normal(size=(len(groups), dim))
  x[:, 7:] += np.repeat(rng.normal(size=(n_records, dim - 7)), windows, 0)
  x[np.arange(len(groups)), type_id] += separation
  x[:, 5] += 2.5 * truth
  x[:, 6] = (hr - 80) / 10 + 0.3 * rng.normal(size=len(groups))
  # ABP on 60% of the records, and within them a third of the windows unknown (damped line).
  has_abp = np.repeat(rng.random(n_records) < 0.6, windows) & (rng.random(len(groups)) > 0.33)
  sbp = np.where(has_abp, 100 + 60 * rng.random(len(groups)), np.nan)
  dbp = np.where(has_abp, 55 + 40 * rng.random(len(groups)), np.nan)
  hr[rng.random(len(groups)) < 0.5] = np.nan  # half the windows without R-peaks
  fields = {
      "alarm_type": alarm_type,
      "alarm_true": truth,
      "seconds_to_alarm": before,
      "hr": hr,
      "sbp": sbp,
      "dbp": dbp,
  }
  return x, groups, fields


def test_multiclass_metrics_match_sklearn_and_survive_a_missing_class():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 4, 400)
  prob = rng.dirichlet(np.ones(4), 400)
  prob[np.arange(400), y] += 0.3 * rng.random(400)
  prob /= prob.sum(1, keepdims=True)
  ours = probe_metrics.multiclass_metrics(y, prob)
  assert ours["macro_auroc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr"))
  assert ours["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, prob.argmax(1)))
  assert ours["macro_f1"] == pytest.approx(skm.f1_score(y, prob.argmax(1), average="macro"))
  # A resample without class 3: averaged over the classes present, as a bootstrap needs.
  rows = y != 3
  part = probe_metrics.multiclass_metrics(y[rows], prob[rows])
  expected = np.mean([skm.roc_auc_score(y[rows] == k, prob[rows, k]) for k in range(3)])
  assert part["macro_auroc"] == pytest.approx(expected)
  assert np.isnan(probe_metrics.multiclass_metrics(np.zeros(5), prob[:5])["macro_auroc"])


def test_separable_alarm_type_scores_high_and_names_its_classes():
  x, groups, fields = _records()
  r = probe.run_task(x, groups, fields, "alarm_type", linear_cfg=FAST)
  assert r["task"] == "alarm_type:60" and r["kind"] == tasks.MULTICLASS
  auroc = r["metrics"]["macro_auroc"]
  assert auroc["value"] > 0.95
  assert auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1]
  assert r["metrics"]["balanced_accuracy"]["value"] > 0.6  # chance is 0.2 with 5 classes
  assert r["metrics"]["macro_f1"]["value"] > 0.6
  # The 7 windows ending 0..60 s before the alarm, 8 records per class, in sorted class order.
  assert [c["name"] for c in r["classes"]] == SORTED_TYPES
  assert [(c["segments"], c["subjects"]) for c in r["classes"]] == [(56, 8)] * 5
  assert r["n_segments"] == 40 * 7 and r["dropped_classes"] == []
  assert all(c["auroc"] > 0.9 for c in r["classes"])


def test_shuffled_alarm_type_scores_at_chance():
  x, groups, fields = _records(seed=4)
  rng = np.random.default_rng(1)
  per_record = fields["alarm_type"][::8]
  shuffled = dict(fields, alarm_type=np.repeat(rng.permutation(per_record), 8))
  r = probe.run_task(x, groups, shuffled, "alarm_type", linear_cfg=FAST)
  value, (lo, hi) = r["metrics"]["macro_auroc"]["value"], r["metrics"]["macro_auroc"]["ci95"]
  assert abs(value - 0.5) < 0.12
  assert lo < 0.5 < hi


def test_xmae_protocol_multiclass_uses_k_outputs():
  x, groups, fields = _records(n_records=50, separation=4.0)
  cfg = probe_config.XMAEProbeConfig(batch_size=32, epochs=7, lr=1e-2)
  r = probe.run_task(x, groups, fields, "alarm_type:all", protocol="xmae", xmae_cfg=cfg)
  assert set(r["metrics"]) == set(probe.XMAE_MULTICLASS_METRICS)
  assert r["metrics"]["macro_auroc"]["mean"] > 0.95
  assert r["metrics"]["accuracy"]["mean"] > 0.6
  assert [c["name"] for c in r["classes"]] == SORTED_TYPES


def test_class_with_fewer_subjects_than_folds_is_dropped_with_a_line():
  x, groups, fields = _records()
  alarm_type = fields["alarm_type"].copy()
  alarm_type[np.isin(groups, ["rec000", "rec005"])] = "Pacing"  # 2 records < 5 folds
  r = probe.run_task(x, groups, dict(fields, alarm_type=alarm_type), "alarm_type", linear_cfg=FAST)
  assert [c["name"] for c in r["classes"]] == SORTED_TYPES
  assert r["dropped_classes"] == [
      {"name": "Pacing", "segments": 14, "subjects": 2, "reason": "fewer than 5 subjects"}
  ]
  assert r["classes"][SORTED_TYPES.index("Ventricular_Tachycardia")]["subjects"] == 6
  assert r["n_segments"] == 38 * 7
  table = report.markdown_table([r])
  assert "dropped: Pacing (2 subjects: fewer than 5 subjects)" in table
  # Only one class left with enough subjects: one line naming every class's subjects.
  few = np.where(np.isin(groups, [f"rec{i:03d}" for i in range(4)]), "Asystole", "Bradycardia")
  with pytest.raises(probe_config.ProbeError) as e:
    probe.run_task(x, groups, dict(fields, alarm_type=few), "alarm_type", linear_cfg=FAST)
  assert str(e.value) == (
      "task alarm_type:60: multiclass target: fewer than 2 classes have at "
      "least 5 subjects (one per fold); subjects per class: Asystole 4, "
      "Bradycardia 36"
  )


def test_hr_and_abp_tasks_with_many_unknown_windows():
  x, groups, fields = _records()
  results = probe.run_tasks(
      x, groups, fields, ["hr", "sbp", "dbp", "hypertension", "alarm_true"], linear_cfg=FAST
  )
  by = {r["task"]: r for r in results}
  assert by["hr"]["n_segments"] == int(np.isfinite(fields["hr"]).sum())
  assert by["hr"]["metrics"]["r2"]["value"] > 0.7  # feature 6 carries it
  assert by["sbp"]["n_segments"] == int(np.isfinite(fields["sbp"]).sum())
  assert by["sbp"]["n_subjects"] < 40  # records without ABP left out
  y, keep, _ = tasks.targets("hypertension", fields)
  assert by["hypertension:xmae"]["n_segments"] == int(keep.sum())
  assert by["alarm_true:60"]["metrics"]["auroc"]["value"] > 0.9  # feature 5 carries it
  assert by["alarm_true:60"]["n_segments"] == 40 * 7


def test_paired_difference_on_multiclass_metrics():
  x, groups, fields = _records()
  noise = np.random.default_rng(9).normal(size=x.shape)
  results = []
  for name, emb in (("encoder", x), ("random", noise)):
    for r in probe.run_tasks(
        emb, groups, fields, ["alarm_type", "alarm_true"], linear_cfg=FAST, keep_predictions=True
    ):
      results.append({"encoder": name, **r})
  diffs = compare.differences_vs(results, "random", n_bootstrap=200)
  by = {d["task"]: d["difference"] for d in diffs}
  assert set(by["alarm_type:60"]) == set(probe_metrics.MULTICLASS_METRICS)
  d = by["alarm_type:60"]["macro_auroc"]
  assert d["value"] > 0.3 and d["ci95"][0] > 0
  assert by["alarm_true:60"]["auroc"]["ci95"][0] > 0
  table = report.differences_table(diffs)
  assert "Δ macro_auroc" in table and "Δ auroc" in table
  assert report.primary_metric(results[0])[0] == "macro_auroc"


def test_xmae_probe_all_skips_absent_tasks_and_missing_task_is_one_line(tmp_path, capsys):
  x, groups, fields = _records(n_records=30)
  path = tmp_path / "icu.npz"
  text_fields = dict(fields, alarm_type=np.where(groups == "rec003", "", fields["alarm_type"]))
  labels = {k: text_fields[k] for k in ("alarm_type", "alarm_true")}
  meta = {k: v for k, v in text_fields.items() if k not in labels}
  embed.save_embeddings(path, x, groups, [f"s{i}" for i in range(len(x))], meta=meta, labels=labels)
  loaded = tasks.fields_from_arrays(embed.load_embeddings(path))
  assert probe.resolve_tasks(["all"], loaded) == [
      "sbp",
      "dbp",
      "hypertension",
      "hr",
      "alarm_true",
      "alarm_type",
  ]
  assert (
      xmae_probe.main(
          [
              "--embeddings",
              str(path),
              "--task",
              "alarm_type",
              "--task",
              "alarm_true",
              "--bootstrap",
              "50",
              "--folds",
              "3",
              "--inner-folds",
              "2",
          ]
      )
      == 0
  )
  out = capsys.readouterr().out
  assert "| alarm_type:60 | linear | 203 | 29 |" in out  # rec003 has no label
  assert "macro_auroc" in out and "Asystole (42 segments, 6 subjects" in out
  bare = tmp_path / "bare.npz"
  embed.save_embeddings(
      bare, x, groups, [f"s{i}" for i in range(len(x))], meta={"hr": fields["hr"]}
  )
  assert xmae_probe.main(["--embeddings", str(bare), "--task", "alarm_type"]) == 1
  err = capsys.readouterr().err
  assert err == (
      "xmae-probe: error: task alarm_type: the data carry no alarm_type, "
      "seconds_to_alarm (fields present: hr)\n"
  )
