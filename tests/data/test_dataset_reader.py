"""dataset_reader.py: the one walk over a dataset directory's records, and the fixed evaluation
batches."""

import shutil

import numpy as np
import pytest

from xmae_jax import config_lib
from xmae_jax import errors
from xmae_jax.benchmarks.bench_data import random_records
from xmae_jax.benchmarks.bench_data import write_dataset
from xmae_jax.data import dataset_reader
from xmae_jax.data import pipeline
from xmae_jax.data import shards

N_TRAIN = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("ds")
  recs = random_records(N_TRAIN + 12, quality_range=(0.8, 1.0), ppg_only_every=5)
  write_dataset(d, {"train": recs[:N_TRAIN], "validation": recs[N_TRAIN:]}, records_per_shard=16)
  return d, recs


def test_iter_records_walks_every_record_in_index_order(dataset):
  d, recs = dataset
  got = list(dataset_reader.iter_records(str(d), "train", chunk=7))
  assert [p for p, _ in got] == list(range(N_TRAIN))
  assert [r.segment_id for _, r in got] == [r.segment_id for r in recs[:N_TRAIN]]
  np.testing.assert_array_equal(got[3][1].ppg, recs[3].ppg.astype(np.float16))


def test_iter_records_applies_the_pipeline_selection(dataset):
  d, _ = dataset
  quality = {"ppg": 0.9, "ecg": 0.9}
  _, index = shards.split_paths(d, "train")
  want = dataset_reader.select_records(index, ("ppg", "ecg"), quality)
  got = [
      p
      for p, r in dataset_reader.iter_records(
          str(d), "train", modalities=("ppg", "ecg"), min_quality=quality
      )
  ]
  assert got == want.tolist() and 0 < len(got) < N_TRAIN


def _cfg(d):
  c = config_lib.data_config("paper")
  c.dir = str(d)
  c.min_quality_ppg = c.min_quality_ecg = 0.0
  return c


def test_eval_dataset_reads_once_and_yields_the_same_batches(dataset, monkeypatch):
  d, _ = dataset
  kw = dict(
      global_batch_size=4, split="validation", process_index=0, process_count=1, with_index=True
  )
  evals = pipeline.make_eval_dataset(_cfg(d), **kw)
  assert len(evals) == 3  # 10 paired records, B = 4
  partial = next(iter(evals))  # an abandoned pass keeps what it read
  first = list(evals)
  once = list(pipeline.make_eval_iterator(_cfg(d), **kw))
  for a, b in zip(first, once, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  np.testing.assert_array_equal(partial["ppg"], first[0]["ppg"])

  def no_reads(*args, **kwargs):
    raise AssertionError("read again")

  monkeypatch.setattr(dataset_reader.ShardReader, "read", no_reads)
  second = list(evals)
  assert all(
      x is y for a, b in zip(first, second, strict=True) for x, y in zip(a.values(), b.values())
  )
  with pytest.raises(ValueError):
    second[0]["ppg"][0, 0] = 5.0  # kept batches are read-only


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_unreadable_index_is_one_line_naming_the_file(dataset, tmp_path, damage):
  d = tmp_path / "ds"
  shutil.copytree(dataset[0], d)
  index = d / "train-index.npz"
  data = index.read_bytes()
  index.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
  with pytest.raises(shards.DatasetError, match="train-index.npz") as e:
    pipeline.make_train_iterator(
        _cfg(d), global_batch_size=4, seed=0, process_index=0, process_count=1
    )
  assert "\n" not in str(e.value) and isinstance(e.value, errors.XmaeError)
