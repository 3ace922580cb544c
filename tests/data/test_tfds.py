"""The TFDS builder over a prepared dataset: tfds.data_source reads our signals (no TF)."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from array_record.python import array_record_module as arm  # pylint: disable=g-import-not-at-top

from xmae_jax.benchmarks.bench_data import random_records  # pylint: disable=g-import-not-at-top
from xmae_jax.benchmarks.bench_data import write_dataset  # pylint: disable=g-import-not-at-top
from xmae_jax.data import record  # pylint: disable=g-import-not-at-top
from xmae_jax.data import shards  # pylint: disable=g-import-not-at-top
from xmae_jax.data import tfds as xtfds  # pylint: disable=g-import-not-at-top


def test_tfds_data_source_yields_our_records(tmp_path):
  src_dir = tmp_path / "ds"
  recs = random_records(30, ppg_only_every=7)
  write_dataset(src_dir, {"train": recs[:22], "validation": recs[22:]}, records_per_shard=10)
  xtfds.prepare(src_dir, tmp_path / "tfds")
  for split, n in (("train", 22), ("validation", 8)):
    source = xtfds.data_source(tmp_path / "tfds", split=split)
    assert len(source) == n
    paths, _ = shards.split_paths(src_dir, split)
    ours = []
    for p in paths:
      reader = arm.ArrayRecordReader(p)
      ours += [record.decode(b) for b in reader.read_all()]
      reader.close()
    for i, rec in enumerate(ours):  # same order: TFDS shuffling is disabled
      ex = source[i]
      assert ex["segment_id"].decode() == rec.segment_id
      assert ex["subject_id"].decode() == rec.subject_id
      for m in ("ppg", "ecg"):
        sig = rec.signal(m)
        assert bool(ex[f"has_{m}"]) == (sig is not None)
        if sig is not None:
          assert ex[m].dtype == np.float16
          np.testing.assert_array_equal(ex[m].astype(np.float32), sig)
      np.testing.assert_allclose(ex["quality_ppg"], rec.quality_ppg, rtol=1e-6)
      assert json.loads(ex["meta"]) == rec.meta
  assert not all(
      bool(xtfds.data_source(tmp_path / "tfds", "train")[i]["has_ecg"]) for i in range(22)
  )


def test_prepare_needs_a_dataset_directory(tmp_path):
  with pytest.raises(shards.DatasetError, match="manifest.json"):
    xtfds.prepare(tmp_path, tmp_path / "tfds")
