"""What both probe protocols share: input checks, the outer folds (subject-grouped, stratified for
classification), and the classes a multiclass target keeps (a class with fewer subjects than
folds cannot be in every fold's training and test part) with the per-class counts a result
reports. The protocols themselves are in `probe`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import GroupKFold
from sklearn.model_selection import KFold
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.model_selection import StratifiedKFold

from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import tasks as tasks_lib


def stratified(kind: str) -> bool:
  return kind in (tasks_lib.CLASSIFICATION, tasks_lib.MULTICLASS)


def check_inputs(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, folds: int):
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] != len(y) or len(groups) != len(y):
    raise probe_config.ProbeError(
        f"features {x.shape}, targets {len(y)} and subjects " f"{len(groups)} do not line up"
    )
  if not np.all(np.isfinite(x)):
    raise probe_config.ProbeError(f"features contain {int(np.sum(~np.isfinite(x)))} NaN/Inf values")
  n_subjects = len(np.unique(groups))
  if n_subjects < 2:
    raise probe_config.ProbeError(
        f"need at least 2 subjects for subject-grouped folds, " f"got {n_subjects}"
    )
  if kind == tasks_lib.CLASSIFICATION:
    classes = np.unique(y)
    if len(classes) != 2 or not set(classes.tolist()) <= {0.0, 1.0}:
      raise probe_config.ProbeError(
          f"binary targets must take both values 0 and 1; " f"got {classes.tolist()}"
      )
  if kind == tasks_lib.MULTICLASS:
    classes = np.unique(y)
    if len(classes) < 2 or np.any(classes < 0) or np.any(classes != np.round(classes)):
      raise probe_config.ProbeError(
          f"multiclass targets must be class ids 0, 1, ... of at "
          f"least 2 classes; got {classes[:10].tolist()}"
      )
  return min(folds, n_subjects)


def outer_splits(y, groups, kind, n_folds, seed, grouped=True):
  """The outer folds [(train rows, test rows)]: subject-grouped unless grouped=False, stratified
  for classification (fewer folds where a class has too few subjects)."""
  idx = np.zeros(len(y))
  if stratified(kind):
    if grouped:
      n_folds = min(n_folds, max_stratified_group_folds(y, groups))
      splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    else:
      n_folds = min(n_folds, int(np.unique(y, return_counts=True)[1].min()))
      splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
  else:
    splitter = (
        GroupKFold(n_folds, shuffle=True, random_state=seed)
        if grouped
        else KFold(n_folds, shuffle=True, random_state=seed)
    )
  if n_folds < 2:
    raise probe_config.ProbeError("too few subjects per class for 2 folds")
  return list(
      splitter.split(idx, y.astype(int) if stratified(kind) else y, groups if grouped else None)
  )


def max_stratified_group_folds(y, groups) -> int:
  """Folds possible so that each class can appear in several folds: subjects having each class."""
  per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
  return max(2, min(per_class))


def select_classes(
    y: np.ndarray, groups: np.ndarray, class_names: Sequence[str] | None, min_subjects: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
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
    raise probe_config.ProbeError(
        f"class ids {present.tolist()} do not index the " f"{len(class_names)} class names"
    )
  counts = {
      int(k): {
          "name": class_names[k],
          "segments": int(np.sum(ids == k)),
          "subjects": int(len(np.unique(groups[ids == k]))),
      }
      for k in present
  }
  kept = [k for k in counts if counts[k]["subjects"] >= min_subjects]
  if len(kept) < 2:
    listing = ", ".join(f"{c['name']} {c['subjects']}" for c in counts.values())
    raise probe_config.ProbeError(
        f"multiclass target: fewer than 2 classes have at least "
        f"{min_subjects} subjects (one per fold); subjects per class: "
        f"{listing}"
    )
  rows = np.flatnonzero(np.isin(ids, kept))
  summary = {
      "classes": [counts[k] for k in kept],
      "dropped_classes": [
          {**counts[k], "reason": f"fewer than {min_subjects} subjects"}
          for k in counts
          if k not in kept
      ],
  }
  return rows, np.searchsorted(kept, ids[rows]).astype(np.float64), summary


def class_probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
  """(N, n_classes) probabilities; a class the model never saw in training gets 0."""
  out = np.zeros((len(x), n_classes))
  out[:, np.asarray(model.classes_).astype(int)] = model.predict_proba(x)
  return out


def multiclass_rows(x, y, groups, kind, class_names, folds):
  """The multiclass rows and summary (see select_classes); everything, unchanged, otherwise."""
  if kind != tasks_lib.MULTICLASS:
    return x, y, groups, {}
  check_inputs(x, y, groups, kind, folds)
  rows, y, summary = select_classes(y, groups, class_names, min(folds, len(np.unique(groups))))
  return x[rows], y, groups[rows], summary


def class_counts(y, kind, classes=None, prob=None):
  """Binary: positives and negatives. Multiclass: the class summary, with each class's
  one-vs-rest AUROC where the class probabilities are given."""
  if kind == tasks_lib.MULTICLASS:
    out = {
        "classes": [dict(c) for c in classes["classes"]],
        "dropped_classes": classes["dropped_classes"],
    }
    if prob is not None:
      for k, c in enumerate(out["classes"]):
        c["auroc"] = probe_metrics.classification_metrics(y == k, prob[:, k])["auroc"]
    return out
  if kind != tasks_lib.CLASSIFICATION:
    return {}
  return {"n_positive": int(np.sum(y == 1)), "n_negative": int(np.sum(y == 0))}
