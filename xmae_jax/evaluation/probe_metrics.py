"""The statistics of the probes: metrics of pooled predictions, and 95% CIs from resampling
subjects (a cluster bootstrap: segments of one subject are not independent), alone
(`subject_bootstrap`) or paired (`paired_statistic`: two score sets on the same segments).

The metrics are plain numpy (equal to scikit-learn's, see the tests) because the bootstrap
calls them thousands of times.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.stats

from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import tasks as tasks_lib

CLASSIFICATION_METRICS = ("auroc", "auprc", "f1", "balanced_accuracy")
MULTICLASS_METRICS = ("macro_auroc", "balanced_accuracy", "macro_f1")
REGRESSION_METRICS = ("mae", "r2", "pearson_r")


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
  """AUROC, AUPRC (average precision), F1 and balanced accuracy at threshold 0.5.

  Plain numpy (equal to sklearn's, see the tests) because the bootstrap calls it thousands
  of times.
  """
  y = np.asarray(y) == 1
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return {k: math.nan for k in CLASSIFICATION_METRICS}
  auroc = _auroc_from_ranks(scipy.stats.rankdata(prob), y)
  order = np.argsort(-prob, kind="mergesort")
  sorted_prob, sorted_y = prob[order], y[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_prob)), len(prob) - 1]
  tps = np.cumsum(sorted_y)[last_of_tie]
  fps = (last_of_tie + 1) - tps
  recall = tps / n_pos
  auprc = np.sum(np.diff(np.r_[0.0, recall]) * tps / (tps + fps))
  pred = prob >= 0.5
  tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
  f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
  balanced = 0.5 * (tp / n_pos + np.sum(~pred & ~y) / n_neg)
  return {
      "auroc": float(auroc),
      "auprc": float(auprc),
      "f1": float(f1),
      "balanced_accuracy": float(balanced),
  }


def _auroc_from_ranks(ranks: np.ndarray, is_pos: np.ndarray) -> float:
  """Mann-Whitney AUROC from the (tie-averaged) ranks of the scores."""
  n_pos = int(is_pos.sum())
  n_neg = len(is_pos) - n_pos
  return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multiclass_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
  """Macro one-vs-rest AUROC, balanced accuracy and macro F1 of class probabilities (N, K).

  AUROC and balanced accuracy average over the classes present in `y` (a subject resample can
  miss one); F1 over the classes present in `y` or predicted, as sklearn does. Equal to sklearn
  when every class is present (see the tests); plain numpy because the bootstrap calls it often.
  """
  y = np.asarray(y).astype(int)
  prob = np.asarray(prob)
  present = np.unique(y)
  if len(present) < 2:
    return {k: math.nan for k in MULTICLASS_METRICS}
  ranks = scipy.stats.rankdata(prob[:, present], axis=0)
  auroc = np.mean([_auroc_from_ranks(ranks[:, i], y == k) for i, k in enumerate(present)])
  pred = prob.argmax(1)
  balanced = np.mean([np.mean(pred[y == k] == k) for k in present])
  f1 = []
  for k in np.union1d(present, pred):
    tp = np.sum((pred == k) & (y == k))
    f1.append(2 * tp / (np.sum(pred == k) + np.sum(y == k)) if tp else 0.0)
  return {
      "macro_auroc": float(auroc),
      "balanced_accuracy": float(balanced),
      "macro_f1": float(np.mean(f1)),
  }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
  if len(y) < 2:
    return {k: math.nan for k in REGRESSION_METRICS}
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  sst = np.sum((y - y.mean()) ** 2)
  r2 = 1.0 - np.sum((y - pred) ** 2) / sst if sst > 0 else math.nan
  r = np.corrcoef(y, pred)[0, 1] if np.std(pred) > 0 and np.std(y) > 0 else math.nan
  return {"mae": float(np.mean(np.abs(y - pred))), "r2": float(r2), "pearson_r": float(r)}


def metrics_fn(kind: str):
  """The metrics of a task kind: classification, multiclass or regression."""
  return {
      tasks_lib.CLASSIFICATION: classification_metrics,
      tasks_lib.MULTICLASS: multiclass_metrics,
  }.get(kind, regression_metrics)


def subject_resamples(groups: np.ndarray, n_bootstrap: int, seed: int):
  """Row indices of `n_bootstrap` subject-level resamples: subjects drawn with replacement, each
  bringing all of its segments (the one resampling loop of every subject-bootstrap CI)."""
  _, inverse = np.unique(groups, return_inverse=True)
  rows_of = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
  rng = np.random.default_rng(seed)
  for _ in range(n_bootstrap):
    picked = rng.integers(0, len(rows_of), len(rows_of))
    yield np.concatenate([rows_of[g] for g in picked])


def percentile_ci(values) -> tuple[float, float]:
  """The 95% percentile interval of the finite draws (NaN, NaN when none is finite)."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return math.nan, math.nan
  return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


def subject_bootstrap(
    y: np.ndarray, score: np.ndarray, groups: np.ndarray, kind: str, *, n_bootstrap: int, seed: int
) -> dict[str, tuple[float, float]]:
  """95% percentile CIs from resampling subjects with replacement (all segments of a subject).

  `score` is per segment: a probability, a value, or (multiclass) a row of class probabilities.
  """
  metric_fn = metrics_fn(kind)
  draws: dict[str, list[float]] = {}
  for rows in subject_resamples(groups, n_bootstrap, seed):
    for name, value in metric_fn(y[rows], score[rows]).items():
      draws.setdefault(name, []).append(value)
  return {name: percentile_ci(values) for name, values in draws.items()}


def _ratio(a: float, b: float) -> float:
  return a / b if b != 0 and math.isfinite(b) else math.nan


# How paired_statistic combines metric(a) and metric(b), and the value that means "no change".
COMBINE = {"difference": (lambda a, b: a - b, 0.0), "ratio": (_ratio, 1.0)}


def paired_statistic(
    y: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: np.ndarray,
    kind: str,
    *,
    combine: str = "difference",
    n_bootstrap: int = probe_config.LINEAR_DEFAULTS.n_bootstrap,
    seed: int = probe_config.LINEAR_DEFAULTS.seed,
) -> dict[str, dict[str, Any]]:
  """combine(metric(a), metric(b)) on the same segments, with a paired subject-bootstrap 95% CI.

  `combine`: "difference" (a - b) or "ratio" (a / b; NaN where metric(b) is 0). Both score sets
  are resampled with the same subjects, so the CI is of the statistic itself (much tighter than
  comparing two separate CIs). Scores as in subject_bootstrap (multiclass: rows of class
  probabilities). Each metric gets `value`, `ci95` and `share_above_R`, the share of resamples
  above R, the no-change value (0 for a difference, 1 for a ratio); draws that are not finite
  (a ratio over a resample whose metric(b) is 0) are left out.
  """
  if combine not in COMBINE:
    raise probe_config.ProbeError(f"unknown combine {combine!r}; choose {', '.join(COMBINE)}")
  fn, neutral = COMBINE[combine]
  metric_fn = metrics_fn(kind)
  a, b = metric_fn(y, score_a), metric_fn(y, score_b)
  draws: dict[str, list[float]] = {k: [] for k in a}
  for rows in subject_resamples(groups, n_bootstrap, seed):
    ma, mb = metric_fn(y[rows], score_a[rows]), metric_fn(y[rows], score_b[rows])
    for k in a:
      draws[k].append(fn(ma[k], mb[k]))
  out = {}
  for k in a:
    v = np.asarray(draws[k], np.float64)
    v = v[np.isfinite(v)]
    out[k] = {
        "value": float(fn(a[k], b[k])),
        "ci95": list(percentile_ci(v)),
        f"share_above_{neutral:g}": float(np.mean(v > neutral)) if len(v) else math.nan,
    }
  return out


def paired_difference(
    y: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: np.ndarray,
    kind: str,
    *,
    n_bootstrap: int = probe_config.LINEAR_DEFAULTS.n_bootstrap,
    seed: int = probe_config.LINEAR_DEFAULTS.seed,
) -> dict[str, dict[str, Any]]:
  """metric(a) - metric(b) with its paired subject-bootstrap CI (paired_statistic's difference)."""
  return paired_statistic(
      y, score_a, score_b, groups, kind, combine="difference", n_bootstrap=n_bootstrap, seed=seed
  )
