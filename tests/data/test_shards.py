"""The dataset-directory format: streamed shard writing, the index, manifest errors."""

import json

import numpy as np
import pytest
from array_record.python import array_record_module as arm

from xmae_jax.data import record
from xmae_jax.data import shards


def _records(n):
  for i in range(n):
    yield record.Record(
        f"subj{(7 * i) % 5}",
        f"seg{i}",
        "test",
        ppg=np.full(1000, i / n, np.float32),
        ecg=None if i % 4 == 0 else np.zeros(1000, np.float32),
        quality_ppg=0.5 + i / (2 * n),
    )


def test_write_split_streams_shards_and_index(tmp_path):
  entry = shards.write_split(tmp_path, "train", _records(10), records_per_shard=4)
  assert entry["shards"] == [shards.shard_name("train", i, 3) for i in range(3)]
  assert entry["records_per_shard"] == [4, 4, 2] and entry["records"] == 10
  assert entry["subject_ids"] == sorted({f"subj{(7 * i) % 5}" for i in range(10)})
  shards.write_manifest(
      tmp_path,
      {"train": entry},
      sampling_rate=100,
      segment_length=1000,
      preprocessing={},
      sources=[],
  )
  paths, index = shards.split_paths(tmp_path, "train")
  decoded = [record.decode(r) for p in paths for r in arm.ArrayRecordReader(p).read_all()]
  assert [d.segment_id for d in decoded] == [f"seg{i}" for i in range(10)]
  # Index rows line up with the records, subject indices with the sorted subject list.
  assert [entry["subject_ids"][s] for s in index["subject"]] == [d.subject_id for d in decoded]
  np.testing.assert_array_equal(index["has_ecg"], [d.ecg is not None for d in decoded])
  np.testing.assert_allclose(index["quality_ppg"], [d.quality_ppg for d in decoded], rtol=1e-6)
  assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp*"))


def test_empty_split_is_reported(tmp_path):
  entry = shards.write_split(tmp_path, "test", iter(()))
  assert entry["records"] == 0 and len(entry["shards"]) == 1
  shards.write_manifest(
      tmp_path,
      {"test": entry},
      sampling_rate=100,
      segment_length=1000,
      preprocessing={},
      sources=[],
  )
  with pytest.raises(shards.DatasetError, match="split 'test' is empty"):
    shards.split_paths(tmp_path, "test")


def test_manifest_errors_name_the_problem(tmp_path):
  with pytest.raises(shards.DatasetError, match="does not exist"):
    shards.read_manifest(tmp_path / "nope")
  with pytest.raises(shards.DatasetError, match="manifest.json is missing"):
    shards.read_manifest(tmp_path)
  (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
  with pytest.raises(shards.DatasetError, match="schema version 99"):
    shards.read_manifest(tmp_path)
