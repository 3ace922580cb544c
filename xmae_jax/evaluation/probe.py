"""Frozen-embedding probes: the field's linear probe and the xMAE paper's own probe.

Two protocols score the same embeddings:

* `linear` (default; how peers such as PaPaGei and Pulse-PPG report frozen features): logistic
  regression (classification, class-balanced) or ridge (regression) on standardized features;
  the regularization strength is chosen by an inner subject-grouped cross-validation inside each
  training part; outer subject-grouped folds (stratified for classification) give out-of-fold
  predictions for every segment. Metrics on the pooled out-of-fold predictions: AUROC, AUPRC, F1
  and balanced accuracy (threshold 0.5), or MAE, R^2 and Pearson r, each with a 95% CI from a
  subject-level (cluster) bootstrap, because segments of one subject are not independent.
  Multiclass tasks: multinomial logistic regression (class-balanced), the same folds (stratified
  on the class), and macro one-vs-rest AUROC, balanced accuracy and macro F1 (argmax class).
* `xmae` (the xMAE group's protocol, as in their public linear-probe script
  `pvc/downstream_eval/binary_linear_prob.py` of Simonlee711/HiMAE_Inference): a linear softmax
  head on the raw embedding, cross-entropy, Adam lr 1e-3, no weight decay, up to 7 epochs,
  batch 2048, early stopping on a 1/8 validation part of each training fold (patience 5, best
  weights restored), 5 folds with seed 77, subject-level folds by default (`folds="segment"` for
  their stratified segment-level folds). Metrics: AUROC, F1, accuracy as mean +- std over folds.
  Regression tasks (not in the paper) use the same head with one output and MSE on the
  standardized target, reporting MAE and R^2; multiclass tasks a K-output head, reporting macro
  AUROC, macro F1, accuracy and balanced accuracy.

Multiclass targets are class ids with `class_names`; a class with fewer subjects than folds
cannot be in every fold's training and test part, so it is dropped before the folds are made and
the result lists it under `dropped_classes` (its other classes, with counts, under `classes`).

No subject is ever in both the training and the test part of a fold.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as skm
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold, StratifiedKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xmae_jax import progress
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import tasks as tasks_lib

PROTOCOLS = ("linear", "xmae")
CLASSIFICATION_METRICS = ("auroc", "auprc", "f1", "balanced_accuracy")
MULTICLASS_METRICS = ("macro_auroc", "balanced_accuracy", "macro_f1")
REGRESSION_METRICS = ("mae", "r2", "pearson_r")
XMAE_CLASSIFICATION_METRICS = ("auroc", "f1", "accuracy")
XMAE_MULTICLASS_METRICS = ("macro_auroc", "macro_f1", "accuracy", "balanced_accuracy")
XMAE_REGRESSION_METRICS = ("mae", "r2")


class ProbeError(XmaeError):
  """Inputs a probe cannot score (too few subjects, a single class, NaN features, ...)."""


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
  outer_folds: int = 5
  inner_folds: int = 3
  seed: int = 0
  n_bootstrap: int = 1000
  c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)       # logistic C = 1/lambda
  alpha_grid: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # ridge alpha
  max_iter: int = 2000


@dataclasses.dataclass(frozen=True)
class XMAEProbeConfig:
  folds: int = 5
  seed: int = 77
  lr: float = 1e-3
  epochs: int = 7
  batch_size: int = 2048
  patience: int = 5
  val_fraction: float = 1 / 8
  group_folds: bool = True         # subject-level folds (False: stratified segment-level folds)


# ----------------------------------------------------------------------------------------------
# Metrics


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
  return {"auroc": float(auroc), "auprc": float(auprc), "f1": float(f1),
          "balanced_accuracy": float(balanced)}


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
  return {"macro_auroc": float(auroc), "balanced_accuracy": float(balanced),
          "macro_f1": float(np.mean(f1))}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
  if len(y) < 2:
    return {k: math.nan for k in REGRESSION_METRICS}
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  sst = np.sum((y - y.mean()) ** 2)
  r2 = 1.0 - np.sum((y - pred) ** 2) / sst if sst > 0 else math.nan
  r = np.corrcoef(y, pred)[0, 1] if np.std(pred) > 0 and np.std(y) > 0 else math.nan
  return {"mae": float(np.mean(np.abs(y - pred))), "r2": float(r2), "pearson_r": float(r)}


def _metrics_fn(kind: str):
  return {tasks_lib.CLASSIFICATION: classification_metrics,
          tasks_lib.MULTICLASS: multiclass_metrics}.get(kind, regression_metrics)


def _stratified(kind: str) -> bool:
  return kind in (tasks_lib.CLASSIFICATION, tasks_lib.MULTICLASS)


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


def subject_bootstrap(y: np.ndarray, score: np.ndarray, groups: np.ndarray, kind: str, *,
                      n_bootstrap: int, seed: int) -> dict[str, tuple[float, float]]:
  """95% percentile CIs from resampling subjects with replacement (all segments of a subject).

  `score` is per segment: a probability, a value, or (multiclass) a row of class probabilities.
  """
  metric_fn = _metrics_fn(kind)
  draws: dict[str, list[float]] = {}
  for rows in subject_resamples(groups, n_bootstrap, seed):
    for name, value in metric_fn(y[rows], score[rows]).items():
      draws.setdefault(name, []).append(value)
  return {name: percentile_ci(values) for name, values in draws.items()}


# ----------------------------------------------------------------------------------------------
# Inputs


def _check_inputs(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, folds: int):
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] != len(y) or len(groups) != len(y):
    raise ProbeError(f"features {x.shape}, targets {len(y)} and subjects {len(groups)} do not line up")
  if not np.all(np.isfinite(x)):
    raise ProbeError(f"features contain {int(np.sum(~np.isfinite(x)))} NaN/Inf values")
  n_subjects = len(np.unique(groups))
  if n_subjects < 2:
    raise ProbeError(f"need at least 2 subjects for subject-grouped folds, got {n_subjects}")
  if kind == tasks_lib.CLASSIFICATION:
    classes = np.unique(y)
    if len(classes) != 2 or not set(classes.tolist()) <= {0.0, 1.0}:
      raise ProbeError(f"binary targets must take both values 0 and 1; got {classes.tolist()}")
  if kind == tasks_lib.MULTICLASS:
    classes = np.unique(y)
    if len(classes) < 2 or np.any(classes < 0) or np.any(classes != np.round(classes)):
      raise ProbeError(f"multiclass targets must be class ids 0, 1, ... of at least 2 classes; "
                       f"got {classes[:10].tolist()}")
  return min(folds, n_subjects)


def _outer_splits(y, groups, kind, n_folds, seed, grouped=True):
  idx = np.zeros(len(y))
  if _stratified(kind):
    if grouped:
      n_folds = min(n_folds, _max_stratified_group_folds(y, groups))
      splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    else:
      n_folds = min(n_folds, int(np.unique(y, return_counts=True)[1].min()))
      splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
  else:
    splitter = (GroupKFold(n_folds, shuffle=True, random_state=seed) if grouped
                else KFold(n_folds, shuffle=True, random_state=seed))
  if n_folds < 2:
    raise ProbeError("too few subjects per class for 2 folds")
  return list(splitter.split(idx, y.astype(int) if _stratified(kind) else y,
                             groups if grouped else None))


def _max_stratified_group_folds(y, groups) -> int:
  """Folds possible so that each class can appear in several folds: subjects having each class."""
  per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
  return max(2, min(per_class))


def select_classes(y: np.ndarray, groups: np.ndarray, class_names: Sequence[str] | None,
                   min_subjects: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """The classes of a multiclass target that have at least `min_subjects` subjects.

  Returns (rows kept, their class ids renumbered 0..K-1 in the original order, a summary with
  `classes` and `dropped_classes`: name, segments, subjects). Fewer than 2 classes left is
  one-line ProbeError naming every class and its subjects.
  """
  ids = np.asarray(y).astype(int)
  present = np.unique(ids)
  if class_names is None:
    class_names = [str(k) for k in range(int(present.max()) + 1)]
  if present.max() >= len(class_names) or present.min() < 0:
    raise ProbeError(f"class ids {present.tolist()} do not index the {len(class_names)} class names")
  counts = {int(k): {"name": class_names[k], "segments": int(np.sum(ids == k)),
                     "subjects": int(len(np.unique(groups[ids == k])))} for k in present}
  kept = [k for k in counts if counts[k]["subjects"] >= min_subjects]
  if len(kept) < 2:
    listing = ", ".join(f"{c['name']} {c['subjects']}" for c in counts.values())
    raise ProbeError(f"multiclass target: fewer than 2 classes have at least {min_subjects} "
                     f"subjects (one per fold); subjects per class: {listing}")
  rows = np.flatnonzero(np.isin(ids, kept))
  summary = {"classes": [counts[k] for k in kept],
             "dropped_classes": [{**counts[k], "reason": f"fewer than {min_subjects} subjects"}
                                 for k in counts if k not in kept]}
  return rows, np.searchsorted(kept, ids[rows]).astype(np.float64), summary


def _class_probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
  """(N, n_classes) probabilities; a class the model never saw in training gets 0."""
  out = np.zeros((len(x), n_classes))
  out[:, np.asarray(model.classes_).astype(int)] = model.predict_proba(x)
  return out


def _multiclass_scorer(estimator, x, y) -> float:
  """Inner-CV score: macro AUROC, robust to folds that miss a class (sklearn's raises)."""
  n_classes = int(max(np.max(y), np.max(estimator.classes_))) + 1
  return multiclass_metrics(y, _class_probabilities(estimator, x, n_classes))["macro_auroc"]


# ----------------------------------------------------------------------------------------------
# The field's linear probe


def _estimator(kind: str, cfg: LinearProbeConfig):
  if _stratified(kind):   # lbfgs: multinomial for more than two classes
    model = LogisticRegression(class_weight="balanced", max_iter=cfg.max_iter)
    return make_pipeline(StandardScaler(), model), {"logisticregression__C": list(cfg.c_grid)}
  return make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": list(cfg.alpha_grid)}


def _fit_fold(x, y, groups, kind, cfg: LinearProbeConfig):
  estimator, grid = _estimator(kind, cfg)
  n_inner = min(cfg.inner_folds, len(np.unique(groups)))
  if _stratified(kind):
    n_inner = min(n_inner, _max_stratified_group_folds(y, groups))
    inner = StratifiedGroupKFold(n_inner, shuffle=True, random_state=cfg.seed)
    scoring = "roc_auc" if kind == tasks_lib.CLASSIFICATION else _multiclass_scorer
  else:
    inner = GroupKFold(n_inner, shuffle=True, random_state=cfg.seed)
    scoring = "neg_mean_squared_error"
  if n_inner < 2:   # a fold with a single training subject per class: no inner CV possible
    return estimator.fit(x, y.astype(int) if _stratified(kind) else y), None
  search = GridSearchCV(estimator, grid, cv=inner, scoring=scoring, refit=True, error_score=np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", UserWarning)   # inner folds that miss a class score NaN
    search.fit(x, y.astype(int) if _stratified(kind) else y, groups=groups)
  return search.best_estimator_, next(iter(search.best_params_.values()))


def _multiclass_rows(x, y, groups, kind, class_names, folds):
  """The multiclass rows and summary (see select_classes); everything, unchanged, otherwise."""
  if kind != tasks_lib.MULTICLASS:
    return x, y, groups, {}
  _check_inputs(x, y, groups, kind, folds)
  rows, y, summary = select_classes(y, groups, class_names, min(folds, len(np.unique(groups))))
  return x[rows], y, groups[rows], summary


def linear_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str,
                 cfg: LinearProbeConfig = LinearProbeConfig(), *,
                 keep_predictions: bool = False,
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Outer subject-grouped CV with inner CV for the regularization; metrics with bootstrap CIs.

  With keep_predictions, the result also holds `predictions` (out-of-fold scores; multiclass:
  (N, K) class probabilities), `targets` and `groups` as arrays (for paired comparisons;
  `report.json_ready` drops them). Multiclass: `y` holds ids into `class_names`.
  """
  x, y, groups = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(groups)
  x, y, groups, classes = _multiclass_rows(x, y, groups, kind, class_names, cfg.outer_folds)
  n_folds = _check_inputs(x, y, groups, kind, cfg.outer_folds)
  splits = _outer_splits(y, groups, kind, n_folds, cfg.seed)
  n_classes = len(classes.get("classes", ()))
  oof = np.full((len(y), n_classes) if n_classes else len(y), np.nan)
  folds = []
  for train, test in splits:
    model, chosen = _fit_fold(x[train], y[train], groups[train], kind, cfg)
    if kind == tasks_lib.MULTICLASS:
      oof[test] = _class_probabilities(model, x[test], n_classes)
    elif kind == tasks_lib.CLASSIFICATION:
      oof[test] = model.predict_proba(x[test])[:, 1]
    else:
      oof[test] = model.predict(x[test])
    folds.append({"n_test": int(len(test)), "n_test_subjects": int(len(np.unique(groups[test]))),
                  "regularization": chosen,
                  **_metrics_fn(kind)(y[test], oof[test])})
  point = _metrics_fn(kind)(y, oof)
  cis = subject_bootstrap(y, oof, groups, kind, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
  return {
      "protocol": "linear", "kind": kind,
      "metrics": {k: {"value": v, "ci95": list(cis[k])} for k, v in point.items()},
      "folds": folds, "n_folds": len(splits),
      "n_segments": int(len(y)), "n_subjects": int(len(np.unique(groups))),
      **_class_counts(y, kind, classes, oof),
      "config": dataclasses.asdict(cfg),
      **({"predictions": oof, "targets": y, "groups": groups} if keep_predictions else {}),
  }


def _class_counts(y, kind, classes=None, prob=None):
  """Binary: positives and negatives. Multiclass: the class summary, with each class's
  one-vs-rest AUROC where the class probabilities are given."""
  if kind == tasks_lib.MULTICLASS:
    out = {"classes": [dict(c) for c in classes["classes"]],
           "dropped_classes": classes["dropped_classes"]}
    if prob is not None:
      for k, c in enumerate(out["classes"]):
        c["auroc"] = classification_metrics(y == k, prob[:, k])["auroc"]
    return out
  if kind != tasks_lib.CLASSIFICATION:
    return {}
  return {"n_positive": int(np.sum(y == 1)), "n_negative": int(np.sum(y == 0))}


# ----------------------------------------------------------------------------------------------
# The xMAE paper's probe (a linear head trained with Adam), in JAX/optax


@functools.lru_cache(maxsize=16)
def _head_functions(n_out: int, lr: float):
  """(init, step, loss) for a linear head, jitted once per (outputs, lr) and reused by every
  fold, task and encoder (compiling per fold dominated the protocol's run time)."""
  import jax
  import jax.numpy as jnp
  import optax

  opt = optax.adam(lr)

  def loss_fn(p, xb, yb, wb):
    out = xb @ p["w"] + p["b"]
    if n_out == 1:
      per = (out[:, 0] - yb) ** 2
    else:
      per = optax.softmax_cross_entropy_with_integer_labels(out, yb.astype(jnp.int32))
    return jnp.sum(per * wb) / jnp.maximum(jnp.sum(wb), 1.0)

  @jax.jit
  def step(p, s, xb, yb, wb):
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb, wb)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  return opt.init, step, jax.jit(loss_fn)


def _train_head(x_tr, y_tr, x_va, y_va, n_out: int, cfg: XMAEProbeConfig, seed: int):
  import jax
  import jax.numpy as jnp

  d = x_tr.shape[1]
  k_w, k_b = jax.random.split(jax.random.key(seed))
  bound = 1.0 / math.sqrt(d)        # PyTorch nn.Linear's default initialization
  params = {"w": jax.random.uniform(k_w, (d, n_out), jnp.float32, -bound, bound),
            "b": jax.random.uniform(k_b, (n_out,), jnp.float32, -bound, bound)}
  init, step, eval_loss = _head_functions(n_out, float(cfg.lr))
  opt_state = init(params)
  rng = np.random.default_rng(seed)
  best, best_loss, bad = params, math.inf, 0
  bs = cfg.batch_size
  for _ in range(cfg.epochs):
    order = rng.permutation(len(x_tr))
    for start in range(0, len(order), bs):
      rows = order[start:start + bs]
      # Pad to a fixed batch so the step compiles once; padded rows have weight 0.
      pad = bs - len(rows)
      xb = np.concatenate([x_tr[rows], np.zeros((pad, d), np.float32)])
      yb = np.concatenate([y_tr[rows], np.zeros(pad, np.float32)])
      wb = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
      params, opt_state, _ = step(params, opt_state, xb, yb, wb)
    val = float(eval_loss(params, x_va, y_va, np.ones(len(y_va), np.float32)))
    if val < best_loss:
      best, best_loss, bad = params, val, 0
    else:
      bad += 1
      if bad >= cfg.patience:
        break
  return lambda xs: np.asarray(xs @ best["w"] + best["b"])


def _validation_split(train, groups, cfg: XMAEProbeConfig, seed: int):
  """Holds out ~1/8 of a training part (whole subjects when folds are subject-level)."""
  rng = np.random.default_rng(seed)
  if cfg.group_folds:
    subjects = np.unique(groups[train])
    n_val = max(1, int(round(len(subjects) * cfg.val_fraction)))
    if len(subjects) - n_val < 1:
      n_val = 0
    val_subjects = set(rng.choice(subjects, n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([g in val_subjects for g in groups[train]])
  else:
    is_val = np.zeros(len(train), bool)
    is_val[rng.permutation(len(train))[:max(1, int(round(len(train) * cfg.val_fraction)))]] = True
  if is_val.all() or not is_val.any():
    is_val = np.zeros(len(train), bool)
    is_val[rng.permutation(len(train))[:max(1, len(train) // 8)]] = True
  return train[~is_val], train[is_val]


def xmae_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str,
               cfg: XMAEProbeConfig = XMAEProbeConfig(), *,
               class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """The xMAE paper's protocol; per-fold metrics and their mean and std."""
  x, y, groups = np.asarray(x, np.float32), np.asarray(y, np.float64), np.asarray(groups)
  x, y, groups, classes = _multiclass_rows(x, y, groups, kind, class_names, cfg.folds)
  n_folds = _check_inputs(x, y, groups, kind, cfg.folds)
  splits = _outer_splits(y, groups, kind, n_folds, cfg.seed, grouped=cfg.group_folds)
  folds = []
  for i, (train, test) in enumerate(splits):
    fit_rows, val_rows = _validation_split(train, groups, cfg, cfg.seed + i)
    if kind == tasks_lib.MULTICLASS:
      n_classes = len(classes["classes"])
      predict = _train_head(x[fit_rows], y[fit_rows].astype(np.float32), x[val_rows],
                            y[val_rows].astype(np.float32), n_classes, cfg, cfg.seed + i)
      prob = _softmax(predict(x[test]))
      m = multiclass_metrics(y[test], prob)
      scores = {"macro_auroc": m["macro_auroc"], "macro_f1": m["macro_f1"],
                "accuracy": float(np.mean(prob.argmax(1) == y[test])),
                "balanced_accuracy": m["balanced_accuracy"]}
    elif kind == tasks_lib.CLASSIFICATION:
      predict = _train_head(x[fit_rows], y[fit_rows].astype(np.float32), x[val_rows],
                            y[val_rows].astype(np.float32), 2, cfg, cfg.seed + i)
      logits = predict(x[test])
      prob = _softmax(logits)[:, 1]
      yt = y[test]
      scores = {"auroc": float(skm.roc_auc_score(yt, prob)) if len(np.unique(yt)) == 2 else math.nan,
                "f1": float(skm.f1_score(yt, logits.argmax(1), zero_division=0)),
                "accuracy": float(skm.accuracy_score(yt, logits.argmax(1)))}
    else:
      mu, sd = y[fit_rows].mean(), y[fit_rows].std() or 1.0
      norm = lambda v: ((v - mu) / sd).astype(np.float32)
      predict = _train_head(x[fit_rows], norm(y[fit_rows]), x[val_rows], norm(y[val_rows]), 1,
                            cfg, cfg.seed + i)
      pred = predict(x[test])[:, 0] * sd + mu
      scores = {"mae": float(np.mean(np.abs(pred - y[test]))),
                "r2": float(skm.r2_score(y[test], pred)) if len(test) > 1 else math.nan}
    folds.append({"n_test": int(len(test)), **scores})
  names = {tasks_lib.CLASSIFICATION: XMAE_CLASSIFICATION_METRICS,
           tasks_lib.MULTICLASS: XMAE_MULTICLASS_METRICS}.get(kind, XMAE_REGRESSION_METRICS)
  summary = {}
  for name in names:
    v = np.array([f[name] for f in folds])
    v = v[np.isfinite(v)]
    summary[name] = {"mean": float(v.mean()) if len(v) else math.nan,
                     "std": float(v.std()) if len(v) else math.nan}
  return {"protocol": "xmae", "kind": kind, "metrics": summary, "folds": folds,
          "n_folds": len(splits), "n_segments": int(len(y)),
          "n_subjects": int(len(np.unique(groups))), **_class_counts(y, kind, classes),
          "config": dataclasses.asdict(cfg)}


def _ratio(a: float, b: float) -> float:
  return a / b if b != 0 and math.isfinite(b) else math.nan


# How paired_statistic combines metric(a) and metric(b), and the value that means "no change".
COMBINE = {"difference": (lambda a, b: a - b, 0.0), "ratio": (_ratio, 1.0)}


def paired_statistic(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                     groups: np.ndarray, kind: str, *, combine: str = "difference",
                     n_bootstrap: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
  """combine(metric(a), metric(b)) on the same segments, with a paired subject-bootstrap 95% CI.

  `combine`: "difference" (a - b) or "ratio" (a / b; NaN where metric(b) is 0). Both score sets
  are resampled with the same subjects, so the CI is of the statistic itself (much tighter than
  comparing two separate CIs). Scores as in subject_bootstrap (multiclass: rows of class
  probabilities). Each metric gets `value`, `ci95` and `share_above_R`, the share of resamples
  above R, the no-change value (0 for a difference, 1 for a ratio); draws that are not finite
  (a ratio over a resample whose metric(b) is 0) are left out.
  """
  if combine not in COMBINE:
    raise ProbeError(f"unknown combine {combine!r}; choose {', '.join(COMBINE)}")
  fn, neutral = COMBINE[combine]
  metric_fn = _metrics_fn(kind)
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
    out[k] = {"value": float(fn(a[k], b[k])), "ci95": list(percentile_ci(v)),
              f"share_above_{neutral:g}": float(np.mean(v > neutral)) if len(v) else math.nan}
  return out


def paired_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                      groups: np.ndarray, kind: str, *, n_bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, dict[str, Any]]:
  """metric(a) - metric(b) with its paired subject-bootstrap CI (paired_statistic's difference)."""
  return paired_statistic(y, score_a, score_b, groups, kind, combine="difference",
                          n_bootstrap=n_bootstrap, seed=seed)


def _softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Tasks on an embeddings file


def run_task(embeddings: np.ndarray, subjects: np.ndarray, fields, task_spec: str, *,
             protocol: str = "linear", linear_cfg: LinearProbeConfig = LinearProbeConfig(),
             xmae_cfg: XMAEProbeConfig = XMAEProbeConfig(),
             keep_predictions: bool = False) -> dict[str, Any]:
  """One task on one set of embeddings: targets from `fields`, then the chosen protocol."""
  if protocol not in PROTOCOLS:
    raise ProbeError(f"unknown protocol {protocol!r}; choose {', '.join(PROTOCOLS)}")
  y, keep, task = tasks_lib.targets(task_spec, fields)
  x, g, y = np.asarray(embeddings)[keep], np.asarray(subjects)[keep], y[keep]
  names = (tasks_lib.class_names(task_spec, fields) if task.kind == tasks_lib.MULTICLASS else None)
  try:
    if protocol == "linear":
      result = linear_probe(x, y, g, task.kind, linear_cfg, keep_predictions=keep_predictions,
                            class_names=names)
    else:
      result = xmae_probe(x, y, g, task.kind, xmae_cfg, class_names=names)
  except ProbeError as e:
    raise ProbeError(f"task {tasks_lib.canonical_name(task_spec)}: {e}") from None
  return {"task": tasks_lib.canonical_name(task_spec), "description": task.description,
          "unit": task.unit, **result}


def run_tasks(embeddings, subjects, fields, task_specs: Sequence[str], *, protocols=("linear",),
              linear_cfg=LinearProbeConfig(), xmae_cfg=XMAEProbeConfig(),
              keep_predictions: bool = False, desc: str = "probing") -> list[dict[str, Any]]:
  results = []
  runs = [(spec, protocol) for spec in task_specs for protocol in protocols]
  with progress.bar(total=len(runs), desc=desc, unit="task") as bar:
    for spec, protocol in runs:
      bar.set_postfix_str(f"{tasks_lib.canonical_name(spec)} ({protocol})")
      results.append(run_task(embeddings, subjects, fields, spec, protocol=protocol,
                              linear_cfg=linear_cfg, xmae_cfg=xmae_cfg,
                              keep_predictions=keep_predictions))
      bar.update(1)
  return results


def resolve_tasks(specs: Sequence[str] | None, fields) -> list[str]:
  """The task specs to run: `all` or none = every default task whose fields the data carry;
  named tasks are checked for a known name and parameter, and run even without their fields
  (so that the missing field is the error the user sees)."""
  if not specs or list(specs) == ["all"]:
    resolved = [t for t in tasks_lib.DEFAULT_TASKS if tasks_lib.available(t, fields)]
    if not resolved:
      raise ProbeError("none of the tasks has its fields in this data")
    return resolved
  for spec in specs:
    tasks_lib.parse(spec)
  return list(specs)


def probe_file(path: str | os.PathLike, specs: Sequence[str] | None, *, protocols=("linear",),
               linear_cfg=LinearProbeConfig(), xmae_cfg=XMAEProbeConfig()
               ) -> list[dict[str, Any]]:
  """Every task of `specs` (see resolve_tasks) on an embeddings file written by xmae-embed."""
  arrays = embed_lib.load_embeddings(path)
  fields = tasks_lib.fields_from_arrays(arrays)
  return run_tasks(arrays["embeddings"], arrays["subject_ids"], fields,
                   resolve_tasks(specs, fields), protocols=protocols, linear_cfg=linear_cfg,
                   xmae_cfg=xmae_cfg)
