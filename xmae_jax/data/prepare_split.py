"""The subject split of a prepared dataset: every subject in exactly one of train, validation
and test, the same for every runner (and the same as the reference's for the same subjects)."""

from __future__ import annotations

from typing import Iterable

from xmae_jax.data import prepare_rules as rules


def split_subjects(
    subjects: Iterable[str], seed: int, test_frac: float = 0.05, val_frac: float = 0.05
) -> dict[str, str]:
  """subject -> 'train' | 'validation' | 'test', deterministic in the seed.

  Same rule as the reference (sklearn train_test_split on the sorted unique subjects, test
  first, then validation from the rest), so with its seed 77 and the same subjects the split is
  the reference's. Fewer than 3 subjects all go to train; otherwise test and validation get at
  least one subject each (ceil) and train keeps at least one.
  """
  for name, f in (("test_frac", test_frac), ("val_frac", val_frac)):
    if not 0 <= f < 1:
      raise rules.PrepareError(f"{name} must be in [0, 1), got {f}")
  subjects = sorted(set(str(s) for s in subjects))
  if len(subjects) < 3:
    return {s: "train" for s in subjects}
  # scikit-learn takes a while to import; only the subject split needs it, not --help.
  from sklearn.model_selection import train_test_split

  rest, test = (
      train_test_split(subjects, test_size=test_frac, random_state=seed)
      if test_frac > 0
      else (subjects, [])
  )
  train, val = (
      train_test_split(rest, test_size=val_frac, random_state=seed)
      if val_frac > 0 and len(rest) >= 2
      else (rest, [])
  )
  out = {s: "train" for s in train}
  out.update({s: "validation" for s in val})
  out.update({s: "test" for s in test})
  return out
