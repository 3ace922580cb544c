"""The mapped fast read (xmae_jax.data.mapped) against the array_record path it replaces."""

import copy as copy_lib
import json

import msgpack
import numpy as np
import pytest

from xmae_jax.benchmarks import bench_data
from xmae_jax.benchmarks.bench_data import random_records
from xmae_jax.benchmarks.bench_data import write_dataset
from xmae_jax.data import dataset_reader
from xmae_jax.data import mapped
from xmae_jax.data import record
from xmae_jax.data import shards

MODS = ("ppg", "ecg")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("ds")
  # 3 shards of ~4 KiB records: each shard spans several 64 KiB blocks, so some waveforms are
  # interrupted by a block header; every 7th record lacks ecg.
  write_dataset(d, {"train": random_records(150, ppg_only_every=7)}, records_per_shard=60)
  return d


def through_array_record(reader, positions, modalities=MODS):
  """What ShardReader.read returned before the mapped path: array_record + byte slicing."""
  raw = reader.read_raw(positions)
  joined = dataset_reader.waveform_bytes(
      raw, modalities, reader.segment_length, reader.index["has_ecg"][positions].astype(bool)
  )
  return {
      m: np.frombuffer(joined[m], "<f2").astype(np.float32).reshape(len(raw), -1)
      for m in modalities
  }


def paired(reader):
  return np.flatnonzero(reader.index["has_ecg"] & reader.index["has_ppg"])


def test_mapped_read_equals_array_record_read(dataset):
  reader = dataset_reader.ShardReader(str(dataset), "train")
  positions = np.random.default_rng(0).permutation(paired(reader))
  got = reader.read(positions, MODS)
  want = through_array_record(reader, positions)
  for m in MODS:
    np.testing.assert_array_equal(got[m], want[m])
  # The fast path did the work, and it met waveforms split by a block header.
  assert reader.mapped_shards.waveforms(positions, MODS) is not None
  at = reader.mapped_shards.waveform_starts(positions, "ecg")
  assert np.any(at % mapped.BLOCK + 2000 > mapped.BLOCK)
  # ppg-only reads include the records without ecg (ppg ends those records).
  everything = np.arange(len(reader))
  np.testing.assert_array_equal(
      reader.read(everything, ("ppg",))["ppg"],
      through_array_record(reader, everything, ("ppg",))["ppg"],
  )


def test_worker_copy_maps_again(dataset):
  reader = dataset_reader.ShardReader(str(dataset), "train")
  positions = paired(reader)[::3]
  first = reader.read(positions, MODS)
  copy = copy_lib.deepcopy(reader)  # through __getstate__/__setstate__, as Grain ships it
  assert [copy.mapped_shards.checked(k) for k in range(3)] == [None] * 3
  assert [reader.mapped_shards.checked(k) for k in range(3)] == [True] * 3
  again = copy.read(positions, MODS)
  for m in MODS:
    np.testing.assert_array_equal(first[m], again[m])


def test_other_layouts_keep_the_array_record_path(tmp_path, monkeypatch):
  # Compressed chunks: the check finds other bytes than array_record returns.
  monkeypatch.setattr(shards, "WRITER_OPTIONS", "group_size:1")
  recs = random_records(40)
  write_dataset(tmp_path / "zstd", {"train": recs}, records_per_shard=20)
  # Waveforms first in the map: the records are uncompressed, but not where encode puts them.
  monkeypatch.setattr(shards, "WRITER_OPTIONS", "group_size:1,uncompressed")
  raw = []
  for r in recs:
    m = msgpack.unpackb(record.encode(r), raw=False)
    raw.append(
        msgpack.packb(
            {"v": m.pop("v"), "ecg": m.pop("ecg"), "ppg": m.pop("ppg"), **m}, use_bin_type=True
        )
    )
  write_dataset(tmp_path / "reordered", {"train": raw}, records_per_shard=20)
  for name in ("zstd", "reordered"):
    reader = dataset_reader.ShardReader(str(tmp_path / name), "train")
    positions = np.arange(40)[::-1]
    assert reader.mapped_shards.waveforms(positions, MODS) is None, name
    assert reader.mapped_shards.checked(0) is (name == "reordered"), name
    got = reader.read(positions, MODS)
    for m in MODS:
      np.testing.assert_array_equal(
          got[m],
          np.stack([recs[i].signal(m).astype(np.float16).astype(np.float32) for i in positions]),
      )


def test_flipped_waveform_byte_is_found_by_the_check(dataset, tmp_path):
  """A bit flip inside a waveform breaks no structure; the one hash-checked pass finds it."""
  import shutil

  d = tmp_path / "ds"
  shutil.copytree(dataset, d)
  reader = dataset_reader.ShardReader(str(d), "train")
  reader.read(np.arange(60, 61), MODS)  # maps and checks shard 1: where record 65 ends
  offset = int(reader.mapped_shards.waveform_starts(np.array([65]), "ecg")[0]) + 1900
  del reader
  shard = d / "train-00001-of-00003.array_record"
  data = bytearray(shard.read_bytes())
  data[offset] ^= 0x01  # inside record 65's ecg samples
  shard.write_bytes(bytes(data))
  reader = dataset_reader.ShardReader(str(d), "train")
  reader.read(np.array([5, 70]), MODS)  # undamaged records of the damaged shard still read...
  assert reader.mapped_shards.checked(1) is False  # ...through array_record, not the mapping
  with pytest.raises(
      shards.DatasetError, match=r"train-00001-of-00003.array_record record 5 \(position 65 "
  ):
    reader.read(np.array([5, 65]), MODS)


def test_bench_data_lines(tmp_path, capsys):
  write_dataset(tmp_path, {"train": random_records(64, quality_range=(0.95, 1.0))})
  bench_data.main(
      [
          "--data-dir",
          str(tmp_path),
          "--batch-size",
          "8",
          "--steps",
          "2",
          "--workers",
          "0",
          "--read-threads",
          "0,1",
      ]
  )
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [x["benchmark"] for x in lines] == ["data_copy", "data", "data"]
  assert [x["read_threads"] for x in lines[1:]] == [0, 1]
  assert all(x["segments_per_s"] > 0 and x["segments_per_cpu_s"] > 0 for x in lines)
