"""Task targets from labels and metadata: the hypertension rules, thresholds, bad specs."""
import numpy as np
import pytest

from xmae_jax.evaluation import tasks


def test_hypertension_rules():
  fields = {"sbp": np.array([140, 130, 120, 125, 118, np.nan]),
            "dbp": np.array([70, 90, 70, 75, 73, 80])}
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
  fields = {"age": np.array([30.0, 49.9, 50.0, 70.0, np.nan]),
            "sex": np.array(["F", "male", "M", "female", "?"])}
  y, keep, _ = tasks.targets("age_over", fields)     # default 50
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
  arrays = {"embeddings": np.zeros((2, 3)), "meta.pvc": np.array([0, 0]),
            "label.pvc": np.array([1, 0]), "meta.age": np.array([40.0, 60.0])}
  fields = tasks.fields_from_arrays(arrays)
  assert set(fields) == {"pvc", "age"}
  np.testing.assert_array_equal(fields["pvc"], [1, 0])
  assert tasks.available("age", fields) and not tasks.available("ptt", fields)
