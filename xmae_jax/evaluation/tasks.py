"""Downstream tasks: how a probe target is derived from the labels and metadata records carry.

A task is named by a spec string `NAME[:PARAM]`, e.g. `age`, `age_over:60`, `hypertension`,
`hypertension:clinical`, `alarm_true:60`. Targets come from `fields`: a mapping from a field name
(`age`, `sex`, `sbp`, `pvc`, ...; record.py lists the usual ones) to a per-segment array, NaN
where unknown.
A target of NaN excludes that segment from the task (e.g. the hypertension band between the
two thresholds).

Three kinds: CLASSIFICATION (binary, targets 0/1), MULTICLASS (targets are class ids 0..K-1 into
`class_names`, the sorted distinct values of the task's first field, so string labels work) and
REGRESSION.

Alarm tasks (`alarm_true`, `alarm_type`) take the window rule as parameter: `SECONDS` keeps the
windows with 0 <= seconds_to_alarm <= SECONDS (the windows just before the alarm, which is what
the alarm was raised on), `all` every window of the record (no seconds_to_alarm needed).

Any label column is a task too: `label:NAME[:classification|regression]` (e.g. a column of the
user's labels file, xmae_jax.data.labels, or of a WFDB header). Without the kind it is inferred
from the data: text, or at most MAX_INFERRED_CLASSES distinct integer values, is classification;
other numbers are regression. Classification of two classes is a binary task whose positive
class is the later of the two sorted values (1 of 0/1, `yes` of no/yes; numbers sort as numbers);
of more classes a multiclass task.

Adding a task is a few lines: write a target function `(fields, param) -> float array` and put a
`Task(...)` in REGISTRY.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from xmae_jax.errors import XmaeError

CLASSIFICATION = "classification"
MULTICLASS = "multiclass"
REGRESSION = "regression"
KINDS = (CLASSIFICATION, MULTICLASS, REGRESSION)
ALARM_WINDOW_FIELD = "seconds_to_alarm"
LABEL = "label"  # `label:NAME[:KIND]`: a label column as a task
LABEL_KINDS = (CLASSIFICATION, REGRESSION)
MAX_INFERRED_CLASSES = 10  # more distinct integer values than this: inferred regression


class TaskError(XmaeError):
  """An unknown task, a bad task parameter, or data that lack the fields a task needs."""


Fields = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str  # CLASSIFICATION (binary, targets 0/1), MULTICLASS or REGRESSION
  needs: tuple[str, ...]  # fields the target is computed from (MULTICLASS: classes first)
  target: Callable[[Fields, str | None], np.ndarray]
  description: str
  default_param: str | None = None
  unit: str = ""
  alarm_window: bool = False  # PARAM is the alarm window rule (SECONDS or all)
  label_classes: tuple[str, ...] = ()  # a MULTICLASS label task's class names (see `resolve`)

  def fields_needed(self, param: str | None) -> tuple[str, ...]:
    if self.alarm_window and param != "all":
      return self.needs + (ALARM_WINDOW_FIELD,)
    return self.needs


def _field(fields: Fields, name: str) -> np.ndarray:
  return np.asarray(fields[name], np.float64)


def _copy(name: str):
  return lambda fields, param: _field(fields, name)


_BOOLEAN_WORDS = {
    "1": 1.0,
    "1.0": 1.0,
    "true": 1.0,
    "yes": 1.0,
    "0": 0.0,
    "0.0": 0.0,
    "false": 0.0,
    "no": 0.0,
}


def _binary(name: str):
  def target(fields, param):
    raw = np.asarray(fields[name])
    if raw.dtype.kind in "USO":  # e.g. "True"/"False" written by a text-based reader
      y = np.array([_BOOLEAN_WORDS.get(str(v).strip().lower(), np.nan) for v in raw])
    else:
      y = raw.astype(np.float64)
    bad = np.isfinite(y) & (y != 0) & (y != 1)
    if bad.any():
      raise TaskError(
          f"field {name!r} must be 0/1 for a binary task; found {np.unique(y[bad])[:5]}"
      )
    return y

  return target


def _age_over(fields, param):
  threshold = _number(param, "age_over")
  age = _field(fields, "age")
  return np.where(np.isfinite(age), (age >= threshold).astype(np.float64), np.nan)


def _hypertension(fields, param):
  """xMAE group's rule (default): >=138/88 positive, <=122/72 negative, the band between excluded.

  `clinical`: the clinical 140/90 cut-off, nothing excluded. `T_SBP/T_DBP` (e.g. `130/80`):
  a custom cut-off, nothing excluded.
  """
  sbp, dbp = _field(fields, "sbp"), _field(fields, "dbp")
  known = np.isfinite(sbp) & np.isfinite(dbp)
  rule = param or "xmae"
  if rule == "xmae":
    pos = (sbp >= 138) | (dbp >= 88)
    neg = (sbp <= 122) & (dbp <= 72)
    y = np.where(pos, 1.0, np.where(neg, 0.0, np.nan))
  else:
    if rule == "clinical":
      t_sbp, t_dbp = 140.0, 90.0
    else:
      try:
        t_sbp, t_dbp = (float(v) for v in rule.split("/"))
      except ValueError:
        raise TaskError(
            f"hypertension rule {rule!r}: use xmae, clinical or SBP/DBP like 130/80"
        ) from None
    y = ((sbp >= t_sbp) | (dbp >= t_dbp)).astype(np.float64)
  return np.where(known, y, np.nan)


def _sex(fields, param):
  raw = np.asarray(fields["sex"])
  if raw.dtype.kind in "USO":
    lookup = {
        "m": 1.0,
        "male": 1.0,
        "1": 1.0,
        "1.0": 1.0,
        "f": 0.0,
        "female": 0.0,
        "0": 0.0,
        "0.0": 0.0,
    }
    return np.array([lookup.get(str(v).strip().lower(), np.nan) for v in raw])
  return _binary("sex")(fields, param)


def categories(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """(class id per segment as float, NaN where unknown; the sorted class names) of a label
  column; numbers and strings alike (a number's class name is its text, e.g. `1.0`)."""
  values = np.asarray(values)
  known = _known(values)
  text = np.array([str(v) for v in values.ravel()], dtype=str).reshape(values.shape)
  names = sorted(set(text[known].tolist()))
  ids = np.searchsorted(np.asarray(names, dtype=str), text) if names else np.zeros(text.shape, int)
  return np.where(known, ids.astype(np.float64), np.nan), names


def _window_seconds(param: str | None, task: str) -> float | None:
  """The alarm window rule: None for `all`, else SECONDS (a number >= 0)."""
  if param == "all":
    return None
  try:
    seconds = float(param)
  except (TypeError, ValueError):
    seconds = math.nan
  if not seconds >= 0:
    raise TaskError(f"task {task}: window {param!r} must be a number of seconds >= 0 or 'all'")
  return seconds


def _in_alarm_window(fields: Fields, param: str | None, task: str, n: int) -> np.ndarray:
  """True for the windows the alarm rule keeps (see the module docstring)."""
  seconds = _window_seconds(param, task)
  if seconds is None:
    return np.ones(n, bool)
  before = _field(fields, ALARM_WINDOW_FIELD)
  with np.errstate(invalid="ignore"):
    return (before >= 0) & (before <= seconds)


def _alarm_true(fields, param):
  y = _binary("alarm_true")(fields, param)
  return np.where(_in_alarm_window(fields, param, "alarm_true", len(y)), y, np.nan)


def _alarm_type(fields, param):
  ids, _ = categories(fields["alarm_type"])
  return np.where(_in_alarm_window(fields, param, "alarm_type", len(ids)), ids, np.nan)


def _number(param: str | None, task: str) -> float:
  try:
    return float(param)
  except (TypeError, ValueError):
    raise TaskError(f"task {task}: parameter {param!r} is not a number") from None


REGISTRY: dict[str, Task] = {
    t.name: t
    for t in [
        Task("age", REGRESSION, ("age",), _copy("age"), "age in years", unit="years"),
        Task(
            "age_over",
            CLASSIFICATION,
            ("age",),
            _age_over,
            "age >= PARAM years",
            default_param="50",
        ),
        Task("sex", CLASSIFICATION, ("sex",), _sex, "sex (1 male, 0 female)"),
        Task("bmi", REGRESSION, ("bmi",), _copy("bmi"), "body-mass index", unit="kg/m2"),
        Task("sbp", REGRESSION, ("sbp",), _copy("sbp"), "systolic blood pressure", unit="mmHg"),
        Task("dbp", REGRESSION, ("dbp",), _copy("dbp"), "diastolic blood pressure", unit="mmHg"),
        Task(
            "hypertension",
            CLASSIFICATION,
            ("sbp", "dbp"),
            _hypertension,
            "hypertension; PARAM = xmae (138/88 vs 122/72, band excluded), clinical (140/90) "
            "or S/D",
            default_param="xmae",
        ),
        Task("hr", REGRESSION, ("hr",), _copy("hr"), "heart rate", unit="bpm"),
        Task("pvc", CLASSIFICATION, ("pvc",), _binary("pvc"), "ectopic (PVC) beat in the segment"),
        Task(
            "ptt",
            REGRESSION,
            ("ptt_ms",),
            _copy("ptt_ms"),
            "pulse-transit time (R-peak to pulse)",
            unit="ms",
        ),
        Task(
            "alarm_true",
            CLASSIFICATION,
            ("alarm_true",),
            _alarm_true,
            "the record's alarm is true (1) or false (0); PARAM = windows ending 0..SECONDS s "
            "before the alarm, or all",
            default_param="60",
            alarm_window=True,
        ),
        Task(
            "alarm_type",
            MULTICLASS,
            ("alarm_type",),
            _alarm_type,
            "the record's alarm type; PARAM = windows ending 0..SECONDS s before the alarm, or all",
            default_param="60",
            alarm_window=True,
        ),
    ]
}

# The tasks `xmae-probe --task all` runs (each needs its fields to be present).
DEFAULT_TASKS = (
    "age",
    "age_over",
    "sex",
    "bmi",
    "sbp",
    "dbp",
    "hypertension",
    "hr",
    "pvc",
    "ptt",
    "alarm_true",
    "alarm_type",
)


def parse(spec: str) -> tuple[Task, str | None]:
  """`"age_over:60"` -> (the age_over task, "60"); the task's default parameter if none given.

  `label:NAME[:KIND]` -> (a task on the column NAME, "NAME[:KIND]"); its kind is the one asked
  for, or REGRESSION as a placeholder until `resolve` infers it from the data.
  """
  name, _, param = spec.partition(":")
  if name == LABEL:
    column, kind = _label_param(spec, param)
    return _label_task(column, kind or REGRESSION, f"label column {column}"), param
  if name not in REGISTRY:
    raise TaskError(
        f"unknown task {name!r}; known: {', '.join(sorted(REGISTRY))}, "
        "or label:NAME[:classification|regression]"
    )
  task = REGISTRY[name]
  if param and task.default_param is None:
    raise TaskError(f"task {name!r} takes no parameter (got {param!r})")
  param = param or task.default_param
  if task.alarm_window:
    _window_seconds(param, name)  # a bad window is an error before any data is read
  return task, param


def canonical_name(spec: str) -> str:
  task, param = parse(spec)
  return task.name if param is None else f"{task.name}:{param}"


def resolve(spec: str, fields: Fields) -> tuple[Task, str | None]:
  """`parse`, with a label task's kind settled on the data: the kind asked for (classification:
  binary for two classes, multiclass for more) or the inferred one (see the module docstring)."""
  task, param = parse(spec)
  if task.name != LABEL:
    return task, param
  column, kind = _label_param(spec, param)
  if column not in fields:
    raise TaskError(
        f"task {spec}: the data carry no column {column!r} "
        f"(columns: {', '.join(sorted(fields)) or 'none'})"
    )
  values = np.asarray(fields[column])
  numbers = _as_numbers(values)
  known = _known(values)
  how = "asked for"
  if kind is None:
    kind, how = _infer_kind(values, numbers, known)
  if kind == REGRESSION:
    if numbers is None:
      text = next((str(v) for v, k in zip(values.ravel(), known.ravel()) if k), "")
      raise TaskError(
          f"task {spec}: column {column!r} holds text (e.g. {text!r}), not numbers "
          "to regress; use label:" + column + ":classification"
      )
    return (
        _label_task(
            column,
            REGRESSION,
            f"label column {column} (regression, {how})",
            target=lambda f, p: numbers,
        ),
        param,
    )
  ids, names = _label_classes(values, numbers, known)
  if len(names) == 2:
    return (
        _label_task(
            column,
            CLASSIFICATION,
            f"label column {column}: {names[1]} (1) vs {names[0]} (0) " f"(classification, {how})",
            target=lambda f, p: ids,
        ),
        param,
    )
  return (
      _label_task(
          column,
          MULTICLASS,
          f"label column {column}: {len(names)} classes (classification, {how})",
          target=lambda f, p: ids,
          class_names=tuple(names),
      ),
      param,
  )


def _label_param(spec: str, param: str) -> tuple[str, str | None]:
  """(column, kind or None) of a label task's parameter `NAME[:KIND]`."""
  column, sep, kind = param.rpartition(":")
  if not sep:
    column, kind = param, None
  elif kind not in LABEL_KINDS:
    raise TaskError(f"task {spec}: kind {kind!r} is not {' or '.join(LABEL_KINDS)}")
  if not column:
    raise TaskError(f"task {spec!r} names no column: use label:NAME[:classification|regression]")
  return column, kind


def _label_task(
    column: str, kind: str, description: str, *, target=None, class_names: tuple[str, ...] = ()
) -> Task:
  return Task(
      LABEL,
      kind,
      (column,),
      target or (lambda f, p: _field(f, column)),
      description,
      label_classes=class_names,
  )


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
  """The column as floats (NaN where unknown), or None if a known value is not a number."""
  if values.dtype.kind in "fiub":
    return values.astype(np.float64)
  known = _known(values)
  out = np.full(values.shape, np.nan)
  for i, (v, k) in enumerate(zip(values.ravel(), known.ravel())):
    if k:
      try:
        out.flat[i] = float(v)
      except (TypeError, ValueError):
        return None
  return out


def _infer_kind(values, numbers, known) -> tuple[str, str]:
  if numbers is None:
    return CLASSIFICATION, "inferred: text values"
  finite = numbers[np.isfinite(numbers)]
  distinct = np.unique(finite)
  if np.all(distinct == np.round(distinct)) and len(distinct) <= MAX_INFERRED_CLASSES:
    return CLASSIFICATION, f"inferred: {len(distinct)} distinct integer values"
  return REGRESSION, f"inferred: {len(distinct)} distinct numbers"


def _label_classes(values, numbers, known) -> tuple[np.ndarray, list[str]]:
  """(class id per segment, NaN where unknown; class names), numbers in numeric order."""
  if numbers is None:
    return categories(values)
  finite = np.isfinite(numbers)
  distinct = np.unique(numbers[finite])
  ids = np.searchsorted(distinct, np.where(finite, numbers, distinct[0] if len(distinct) else 0))
  return (np.where(finite, ids.astype(np.float64), np.nan), [f"{v:g}" for v in distinct.tolist()])


def available(spec: str, fields: Fields) -> bool:
  """Whether the data carry every field the task needs, each with some known value."""
  task, param = parse(spec)  # (a label task needs its column, whatever its kind)
  return all(n in fields and np.any(_known(fields[n])) for n in task.fields_needed(param))


def class_names(spec: str, fields: Fields) -> list[str]:
  """The names of a MULTICLASS task's class ids (sorted distinct values of its first field)."""
  task, _ = resolve(spec, fields)
  if task.kind != MULTICLASS:
    raise TaskError(f"task {task.name} is not a multiclass task")
  if task.name == LABEL:
    return list(task.label_classes)
  return categories(fields[task.needs[0]])[1]


def targets(spec: str, fields: Fields) -> tuple[np.ndarray, np.ndarray, Task]:
  """(y, keep, task): y per segment (0/1 floats, class ids or values), keep = the segments the
  task uses."""
  task, param = resolve(spec, fields)
  missing = [n for n in task.fields_needed(param) if n not in fields]
  if missing:
    raise TaskError(
        f"task {task.name}: the data carry no {', '.join(missing)} "
        f"(fields present: {', '.join(sorted(fields)) or 'none'})"
    )
  y = np.asarray(task.target(fields, param), np.float64)
  keep = np.isfinite(y)
  if not keep.any():
    raise TaskError(f"task {canonical_name(spec)}: no segment has a usable target")
  if task.kind in (CLASSIFICATION, MULTICLASS):
    classes = np.unique(y[keep])
    if len(classes) < 2:
      only = (
          class_names(spec, fields)[int(classes[0])]
          if task.kind == MULTICLASS
          else f"{classes[0]:g}"
      )
      raise TaskError(f"task {canonical_name(spec)}: only class {only} present in the data")
  return y, keep, task


def _known(a: np.ndarray) -> np.ndarray:
  a = np.asarray(a)
  if a.dtype.kind in "fc":
    return np.isfinite(a)
  if a.dtype.kind in "iub":
    return np.ones(a.shape, bool)
  return np.array([str(v) not in ("", "nan", "None") for v in a.ravel()]).reshape(a.shape)


def fields_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Fields from an embeddings file's arrays: `meta.NAME` and `label.NAME` (labels win)."""
  fields = {}
  for prefix in ("meta.", "label."):
    for key, value in arrays.items():
      if key.startswith(prefix):
        fields[key[len(prefix) :]] = np.asarray(value)
  return fields
