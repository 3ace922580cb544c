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

No subject is ever in both the training and the test part of a fold (`probe_folds`: the folds,
input checks and class selection both protocols share).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.model_selection import GroupKFold
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xmae_jax import progress
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import probe_folds
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import tasks as tasks_lib

XMAE_CLASSIFICATION_METRICS = ("auroc", "f1", "accuracy")
XMAE_MULTICLASS_METRICS = ("macro_auroc", "macro_f1", "accuracy", "balanced_accuracy")
XMAE_REGRESSION_METRICS = ("mae", "r2")


# ----------------------------------------------------------------------------------------------
# The field's linear probe


def _multiclass_scorer(estimator, x, y) -> float:
  """Inner-CV score: macro AUROC, robust to folds that miss a class (sklearn's raises)."""
  n_classes = int(max(np.max(y), np.max(estimator.classes_))) + 1
  prob = probe_folds.class_probabilities(estimator, x, n_classes)
  return probe_metrics.multiclass_metrics(y, prob)["macro_auroc"]


def _estimator(kind: str, cfg: probe_config.LinearProbeConfig):
  if probe_folds.stratified(kind):  # lbfgs: multinomial for more than two classes
    model = LogisticRegression(class_weight="balanced", max_iter=cfg.max_iter)
    return make_pipeline(StandardScaler(), model), {"logisticregression__C": list(cfg.c_grid)}
  return make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": list(cfg.alpha_grid)}


def _fit_fold(x, y, groups, kind, cfg: probe_config.LinearProbeConfig):
  estimator, grid = _estimator(kind, cfg)
  n_inner = min(cfg.inner_folds, len(np.unique(groups)))
  if probe_folds.stratified(kind):
    n_inner = min(n_inner, probe_folds.max_stratified_group_folds(y, groups))
    inner = StratifiedGroupKFold(n_inner, shuffle=True, random_state=cfg.seed)
    scoring = "roc_auc" if kind == tasks_lib.CLASSIFICATION else _multiclass_scorer
  else:
    inner = GroupKFold(n_inner, shuffle=True, random_state=cfg.seed)
    scoring = "neg_mean_squared_error"
  if n_inner < 2:  # a fold with a single training subject per class: no inner CV possible
    return estimator.fit(x, y.astype(int) if probe_folds.stratified(kind) else y), None
  search = GridSearchCV(estimator, grid, cv=inner, scoring=scoring, refit=True, error_score=np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", UserWarning)  # inner folds that miss a class score NaN
    search.fit(x, y.astype(int) if probe_folds.stratified(kind) else y, groups=groups)
  return search.best_estimator_, next(iter(search.best_params_.values()))


def linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    kind: str,
    cfg: probe_config.LinearProbeConfig = probe_config.LinearProbeConfig(),
    *,
    keep_predictions: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
  """Outer subject-grouped CV with inner CV for the regularization; metrics with bootstrap CIs.

  With keep_predictions, the result also holds `predictions` (out-of-fold scores; multiclass:
  (N, K) class probabilities), `targets` and `groups` as arrays (for paired comparisons;
  `report.json_ready` drops them). Multiclass: `y` holds ids into `class_names`.
  """
  x, y, groups = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(groups)
  x, y, groups, classes = probe_folds.multiclass_rows(
      x, y, groups, kind, class_names, cfg.outer_folds
  )
  n_folds = probe_folds.check_inputs(x, y, groups, kind, cfg.outer_folds)
  splits = probe_folds.outer_splits(y, groups, kind, n_folds, cfg.seed)
  n_classes = len(classes.get("classes", ()))
  oof = np.full((len(y), n_classes) if n_classes else len(y), np.nan)
  folds = []
  for train, test in splits:
    model, chosen = _fit_fold(x[train], y[train], groups[train], kind, cfg)
    if kind == tasks_lib.MULTICLASS:
      oof[test] = probe_folds.class_probabilities(model, x[test], n_classes)
    elif kind == tasks_lib.CLASSIFICATION:
      oof[test] = model.predict_proba(x[test])[:, 1]
    else:
      oof[test] = model.predict(x[test])
    folds.append(
        {
            "n_test": int(len(test)),
            "n_test_subjects": int(len(np.unique(groups[test]))),
            "regularization": chosen,
            **probe_metrics.metrics_fn(kind)(y[test], oof[test]),
        }
    )
  point = probe_metrics.metrics_fn(kind)(y, oof)
  cis = probe_metrics.subject_bootstrap(
      y, oof, groups, kind, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed
  )
  return {
      "protocol": "linear",
      "kind": kind,
      "metrics": {k: {"value": v, "ci95": list(cis[k])} for k, v in point.items()},
      "folds": folds,
      "n_folds": len(splits),
      "n_segments": int(len(y)),
      "n_subjects": int(len(np.unique(groups))),
      **probe_folds.class_counts(y, kind, classes, oof),
      "config": dataclasses.asdict(cfg),
      **({"predictions": oof, "targets": y, "groups": groups} if keep_predictions else {}),
  }


# ----------------------------------------------------------------------------------------------
# The xMAE paper's probe (a linear head trained with Adam), in JAX/optax


@functools.lru_cache(maxsize=16)
def _head_functions(n_out: int, lr: float):
  """(init, step, loss) for a linear head, jitted once per (outputs, lr) and reused by every
  fold, task and encoder (compiling per fold dominated the protocol's run time)."""
  # JAX only for this protocol: the linear probe and xmae-probe --help run without it.
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


def _train_head(x_tr, y_tr, x_va, y_va, n_out: int, cfg: probe_config.XMAEProbeConfig, seed: int):
  # JAX only for this protocol: the linear probe and xmae-probe --help run without it.
  import jax
  import jax.numpy as jnp

  d = x_tr.shape[1]
  k_w, k_b = jax.random.split(jax.random.key(seed))
  bound = 1.0 / math.sqrt(d)  # PyTorch nn.Linear's default initialization
  params = {
      "w": jax.random.uniform(k_w, (d, n_out), jnp.float32, -bound, bound),
      "b": jax.random.uniform(k_b, (n_out,), jnp.float32, -bound, bound),
  }
  init, step, eval_loss = _head_functions(n_out, float(cfg.lr))
  opt_state = init(params)
  rng = np.random.default_rng(seed)
  best, best_loss, bad = params, math.inf, 0
  bs = cfg.batch_size
  for _ in range(cfg.epochs):
    order = rng.permutation(len(x_tr))
    for start in range(0, len(order), bs):
      rows = order[start : start + bs]
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


def validation_split(train, groups, cfg: probe_config.XMAEProbeConfig, seed: int):
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
    is_val[rng.permutation(len(train))[: max(1, int(round(len(train) * cfg.val_fraction)))]] = True
  if is_val.all() or not is_val.any():
    is_val = np.zeros(len(train), bool)
    is_val[rng.permutation(len(train))[: max(1, len(train) // 8)]] = True
  return train[~is_val], train[is_val]


def xmae_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    kind: str,
    cfg: probe_config.XMAEProbeConfig = probe_config.XMAEProbeConfig(),
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
  """The xMAE paper's protocol; per-fold metrics and their mean and std."""
  x, y, groups = np.asarray(x, np.float32), np.asarray(y, np.float64), np.asarray(groups)
  x, y, groups, classes = probe_folds.multiclass_rows(x, y, groups, kind, class_names, cfg.folds)
  n_folds = probe_folds.check_inputs(x, y, groups, kind, cfg.folds)
  splits = probe_folds.outer_splits(y, groups, kind, n_folds, cfg.seed, grouped=cfg.group_folds)
  folds = []
  for i, (train, test) in enumerate(splits):
    fit_rows, val_rows = validation_split(train, groups, cfg, cfg.seed + i)
    if kind == tasks_lib.MULTICLASS:
      n_classes = len(classes["classes"])
      predict = _train_head(
          x[fit_rows],
          y[fit_rows].astype(np.float32),
          x[val_rows],
          y[val_rows].astype(np.float32),
          n_classes,
          cfg,
          cfg.seed + i,
      )
      prob = _softmax(predict(x[test]))
      m = probe_metrics.multiclass_metrics(y[test], prob)
      scores = {
          "macro_auroc": m["macro_auroc"],
          "macro_f1": m["macro_f1"],
          "accuracy": float(np.mean(prob.argmax(1) == y[test])),
          "balanced_accuracy": m["balanced_accuracy"],
      }
    elif kind == tasks_lib.CLASSIFICATION:
      predict = _train_head(
          x[fit_rows],
          y[fit_rows].astype(np.float32),
          x[val_rows],
          y[val_rows].astype(np.float32),
          2,
          cfg,
          cfg.seed + i,
      )
      logits = predict(x[test])
      prob = _softmax(logits)[:, 1]
      yt = y[test]
      auroc = float(skm.roc_auc_score(yt, prob)) if len(np.unique(yt)) == 2 else math.nan
      scores = {
          "auroc": auroc,
          "f1": float(skm.f1_score(yt, logits.argmax(1), zero_division=0)),
          "accuracy": float(skm.accuracy_score(yt, logits.argmax(1))),
      }
    else:
      mu, sd = y[fit_rows].mean(), y[fit_rows].std() or 1.0
      norm = lambda v: ((v - mu) / sd).astype(np.float32)
      predict = _train_head(
          x[fit_rows], norm(y[fit_rows]), x[val_rows], norm(y[val_rows]), 1, cfg, cfg.seed + i
      )
      pred = predict(x[test])[:, 0] * sd + mu
      scores = {
          "mae": float(np.mean(np.abs(pred - y[test]))),
          "r2": float(skm.r2_score(y[test], pred)) if len(test) > 1 else math.nan,
      }
    folds.append({"n_test": int(len(test)), **scores})
  names = {
      tasks_lib.CLASSIFICATION: XMAE_CLASSIFICATION_METRICS,
      tasks_lib.MULTICLASS: XMAE_MULTICLASS_METRICS,
  }.get(kind, XMAE_REGRESSION_METRICS)
  summary = {}
  for name in names:
    v = np.array([f[name] for f in folds])
    v = v[np.isfinite(v)]
    summary[name] = {
        "mean": float(v.mean()) if len(v) else math.nan,
        "std": float(v.std()) if len(v) else math.nan,
    }
  return {
      "protocol": "xmae",
      "kind": kind,
      "metrics": summary,
      "folds": folds,
      "n_folds": len(splits),
      "n_segments": int(len(y)),
      "n_subjects": int(len(np.unique(groups))),
      **probe_folds.class_counts(y, kind, classes),
      "config": dataclasses.asdict(cfg),
  }


def _softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Tasks on an embeddings file


def run_task(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    fields,
    task_spec: str,
    *,
    protocol: str = "linear",
    linear_cfg: probe_config.LinearProbeConfig = probe_config.LinearProbeConfig(),
    xmae_cfg: probe_config.XMAEProbeConfig = probe_config.XMAEProbeConfig(),
    keep_predictions: bool = False,
) -> dict[str, Any]:
  """One task on one set of embeddings: targets from `fields`, then the chosen protocol."""
  if protocol not in probe_config.PROTOCOLS:
    raise probe_config.ProbeError(
        f"unknown protocol {protocol!r}; " f"choose {', '.join(probe_config.PROTOCOLS)}"
    )
  y, keep, task = tasks_lib.targets(task_spec, fields)
  x, g, y = np.asarray(embeddings)[keep], np.asarray(subjects)[keep], y[keep]
  names = tasks_lib.class_names(task_spec, fields) if task.kind == tasks_lib.MULTICLASS else None
  try:
    if protocol == "linear":
      result = linear_probe(
          x, y, g, task.kind, linear_cfg, keep_predictions=keep_predictions, class_names=names
      )
    else:
      result = xmae_probe(x, y, g, task.kind, xmae_cfg, class_names=names)
  except probe_config.ProbeError as e:
    raise probe_config.ProbeError(f"task {tasks_lib.canonical_name(task_spec)}: {e}") from None
  return {
      "task": tasks_lib.canonical_name(task_spec),
      "description": task.description,
      "unit": task.unit,
      **result,
  }


def run_tasks(
    embeddings,
    subjects,
    fields,
    task_specs: Sequence[str],
    *,
    protocols=("linear",),
    linear_cfg=probe_config.LinearProbeConfig(),
    xmae_cfg=probe_config.XMAEProbeConfig(),
    keep_predictions: bool = False,
    desc: str = "probing",
) -> list[dict[str, Any]]:
  results = []
  runs = [(spec, protocol) for spec in task_specs for protocol in protocols]
  with progress.bar(total=len(runs), desc=desc, unit="task") as bar:
    for spec, protocol in runs:
      bar.set_postfix_str(f"{tasks_lib.canonical_name(spec)} ({protocol})")
      results.append(
          run_task(
              embeddings,
              subjects,
              fields,
              spec,
              protocol=protocol,
              linear_cfg=linear_cfg,
              xmae_cfg=xmae_cfg,
              keep_predictions=keep_predictions,
          )
      )
      bar.update(1)
  return results


def resolve_tasks(specs: Sequence[str] | None, fields) -> list[str]:
  """The task specs to run: `all` or none = every default task whose fields the data carry;
  named tasks are checked for a known name and parameter, and run even without their fields
  (so that the missing field is the error the user sees)."""
  if not specs or list(specs) == ["all"]:
    resolved = [t for t in tasks_lib.DEFAULT_TASKS if tasks_lib.available(t, fields)]
    if not resolved:
      raise probe_config.ProbeError("none of the tasks has its fields in this data")
    return resolved
  for spec in specs:
    tasks_lib.parse(spec)
  return list(specs)


def probe_file(
    path: str | os.PathLike,
    specs: Sequence[str] | None,
    *,
    protocols=("linear",),
    linear_cfg=probe_config.LinearProbeConfig(),
    xmae_cfg=probe_config.XMAEProbeConfig(),
) -> list[dict[str, Any]]:
  """Every task of `specs` (see resolve_tasks) on an embeddings file written by xmae-embed."""
  arrays = embed_lib.load_embeddings(path)
  fields = tasks_lib.fields_from_arrays(arrays)
  return run_tasks(
      arrays["embeddings"],
      arrays["subject_ids"],
      fields,
      resolve_tasks(specs, fields),
      protocols=protocols,
      linear_cfg=linear_cfg,
      xmae_cfg=xmae_cfg,
  )
