"""Task targets from labels and metadata: the hypertension rules, thresholds, bad specs."""

import numpy as np
import pytest

from xmae_jax.evaluation import tasks


def test_hypertension_rules():
  fields = {
      "sbp": np.array([140, 130, 120, 125, 118, np.nan]),
      "dbp": np.array([70, 90, 70, 75, 73, 80]),
  }
  y, keep, task = tasks.targets("hypertension", fields)
  assert task.kind == tasks.CLASSIFICATION
  # 140/70 pos (SBP>=138); 130/90 pos (DBP>=88); 120/70 neg; 125/75 band; 118/73 band (DBP>72)
  np.testing.assert_array_equal(keep, [True, True, True, False, False, False])
  np.testing.assert_array_equal(y[keep], [1, 1, 0])
  y, keep, _ = tasks.targets("hypertension:clinical", fields)
  np.testing.assert_array_equal(y[keep], [1, 1, 0, 0, 0])
  y, keep, _ = tasks.targets("hypertension:130/80", fields)
  np.testing.assert_array_equal(y[keep], [1, 1, 0, 0, 0])


def test_age_threshold_and_sex_strings():
  fields = {
      "age": np.array([30.0, 49.9, 50.0, 70.0, np.nan]),
      "sex": np.array(["F", "male", "M", "female", "?"]),
  }
  y, keep, _ = tasks.targets("age_over", fields)  # default 50
  np.testing.assert_array_equal(y[keep], [0, 0, 1, 1])
  y, keep, _ = tasks.targets("age_over:40", fields)
  np.testing.assert_array_equal(y[keep], [0, 1, 1, 1])
  y, keep, _ = tasks.targets("sex", fields)
  np.testing.assert_array_equal(keep, [True, True, True, True, False])
  np.testing.assert_array_equal(y[keep], [0, 1, 1, 0])


def test_bad_specs_and_missing_fields():
  with pytest.raises(tasks.TaskError, match="unknown task"):
    tasks.parse("blood_type")
  with pytest.raises(tasks.TaskError, match="no parameter"):
    tasks.parse("hr:3")
  with pytest.raises(tasks.TaskError, match="carry no ptt_ms"):
    tasks.targets("ptt", {"hr": np.ones(3)})
  with pytest.raises(tasks.TaskError, match="only class"):
    tasks.targets("pvc", {"pvc": np.zeros(4)})
  with pytest.raises(tasks.TaskError, match="0/1"):
    tasks.targets("pvc", {"pvc": np.array([0, 2.0])})


def test_fields_from_arrays_labels_win():
  arrays = {
      "embeddings": np.zeros((2, 3)),
      "meta.pvc": np.array([0, 0]),
      "label.pvc": np.array([1, 0]),
      "meta.age": np.array([40.0, 60.0]),
  }
  fields = tasks.fields_from_arrays(arrays)
  assert set(fields) == {"pvc", "age"}
  np.testing.assert_array_equal(fields["pvc"], [1, 0])
  assert tasks.available("age", fields) and not tasks.available("ptt", fields)


def _alarm_fields():
  """Two records, windows ending 70, 60, 30, 0 s before the alarm and one 10 s after it."""
  before = np.array([70, 60, 30, 0, -10, 70, 60.5, 30, 0, np.nan])
  return {
      "seconds_to_alarm": before,
      "alarm_true": np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], float),
      "alarm_type": np.array(["Tachycardia"] * 5 + ["Asystole"] * 4 + [""]),
      "hr": np.full(10, np.nan),
  }


def test_alarm_window_rule_selects_the_windows_before_the_alarm():
  fields = _alarm_fields()
  y, keep, task = tasks.targets("alarm_true", fields)  # default: the last 60 s
  assert task.kind == tasks.CLASSIFICATION and tasks.canonical_name("alarm_true") == "alarm_true:60"
  np.testing.assert_array_equal(np.flatnonzero(keep), [1, 2, 3, 7, 8])
  np.testing.assert_array_equal(y[keep], [1, 1, 1, 0, 0])
  _, keep, _ = tasks.targets("alarm_true:30", fields)
  np.testing.assert_array_equal(np.flatnonzero(keep), [2, 3, 7, 8])
  _, keep, _ = tasks.targets("alarm_true:all", fields)  # every window with a label
  np.testing.assert_array_equal(keep, np.ones(10, bool))
  # alarm_type: string classes in sorted order; the unlabelled window is left out.
  y, keep, task = tasks.targets("alarm_type:60.5", fields)
  assert task.kind == tasks.MULTICLASS
  assert tasks.class_names("alarm_type", fields) == ["Asystole", "Tachycardia"]
  np.testing.assert_array_equal(np.flatnonzero(keep), [1, 2, 3, 6, 7, 8])
  np.testing.assert_array_equal(y[keep], [1, 1, 1, 0, 0, 0])
  _, keep, _ = tasks.targets("alarm_type:all", fields)
  np.testing.assert_array_equal(np.flatnonzero(keep), np.arange(9))
  # `all` needs no seconds_to_alarm; a window rule does.
  no_time = {k: v for k, v in fields.items() if k != "seconds_to_alarm"}
  assert tasks.available("alarm_type:all", no_time) and not tasks.available("alarm_type", no_time)
  with pytest.raises(
      tasks.TaskError, match=r"window '-5' must be a number of seconds >= 0 or 'all'"
  ):
    tasks.parse("alarm_true:-5")
  with pytest.raises(tasks.TaskError, match="window 'last'"):
    tasks.targets("alarm_type:last", fields)
  with pytest.raises(tasks.TaskError, match="only class Tachycardia present"):
    seconds_to_alarm = np.where(fields["alarm_true"] == 1, 0, -1.0)
    tasks.targets("alarm_type:0", {**fields, "seconds_to_alarm": seconds_to_alarm})


def test_alarm_true_absent_for_some_records_and_string_booleans():
  fields = {
      "seconds_to_alarm": np.zeros(5),
      "alarm_true": np.array(["True", "false", "", "1", "nan"]),
  }
  y, keep, _ = tasks.targets("alarm_true", fields)
  np.testing.assert_array_equal(keep, [True, True, False, True, False])
  np.testing.assert_array_equal(y[keep], [1, 0, 1])


def test_missing_fields_error_is_one_line_naming_the_task_and_fields_present():
  fields = {"hr": np.ones(3), "sbp": np.ones(3)}
  with pytest.raises(tasks.TaskError) as e:
    tasks.targets("alarm_type", fields)
  assert str(e.value) == (
      "task alarm_type: the data carry no alarm_type, seconds_to_alarm " "(fields present: hr, sbp)"
  )
  with pytest.raises(
      tasks.TaskError,
      match=r"^task alarm_true: the data carry no alarm_true " r"\(fields present: hr, sbp\)$",
  ):
    tasks.targets("alarm_true:all", fields)
