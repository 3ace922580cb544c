"""A small simulator dataset for the training tests, prepared through the real path."""
from pathlib import Path


def synthetic_dataset(tmp_path_factory, num_subjects: int, minutes_per_subject: float) -> Path:
  """A small simulator dataset prepared through the real path (seed 0, one worker, quiet)."""
  from xmae_jax.data import prepare
  out = tmp_path_factory.mktemp("synthetic")
  prepare.prepare_dataset("synthetic", None, out, workers=1, seed=0, progress=False,
                          source_options={"num_subjects": num_subjects,
                                          "minutes_per_subject": minutes_per_subject},
                          log=lambda *a, **k: None)
  return out
