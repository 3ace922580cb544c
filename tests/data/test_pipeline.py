"""The Grain input pipeline (xmae_jax.data.pipeline / augment), single process."""

import copy
import math

import msgpack
import numpy as np
import pytest

from xmae_jax import config_lib
from xmae_jax.benchmarks.bench_data import random_records
from xmae_jax.benchmarks.bench_data import write_dataset
from xmae_jax.data import augment
from xmae_jax.data import dataset_reader
from xmae_jax.data import pipeline
from xmae_jax.data import preprocess
from xmae_jax.data import record
from xmae_jax.data import shards

N_TRAIN = 90  # 3 shards of 32/32/26 records
PPG_ONLY_EVERY = 9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("ds")
  recs = random_records(N_TRAIN + 20, quality_range=(0.8, 1.0), ppg_only_every=PPG_ONLY_EVERY)
  write_dataset(d, {"train": recs[:N_TRAIN], "validation": recs[N_TRAIN:]}, records_per_shard=32)
  return d


def data_cfg(d, **kw):
  c = config_lib.data_config("paper")
  c.dir = str(d)
  c.augment.enabled = True  # off by default (as the reference trains); exercised here
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def train_iter(d, *, batch=8, seed=0, cfg=None, **kw):
  return pipeline.make_train_iterator(
      cfg or data_cfg(d),
      global_batch_size=batch,
      seed=seed,
      process_index=0,
      process_count=1,
      with_index=True,
      **kw
  )


def index_of(d, split="train"):
  return shards.split_paths(d, split)[1]


def decoded(d, split="train"):
  paths, _ = shards.split_paths(d, split)
  from array_record.python import array_record_module as arm

  out = []
  for p in paths:
    r = arm.ArrayRecordReader(p)
    out += [record.decode(b) for b in r.read_all()]
    r.close()
  return out


def test_eval_pass_equals_decoded_records(dataset):
  """No augmentation in eval: every row is min-max(record waveform); one pass covers all."""
  recs = decoded(dataset)
  keep = dataset_reader.select_records(index_of(dataset), ("ppg", "ecg"), {"ppg": 0.9, "ecg": 0.9})
  batches = list(
      pipeline.make_eval_iterator(
          data_cfg(dataset),
          global_batch_size=8,
          split="train",
          process_index=0,
          process_count=1,
          with_index=True,
      )
  )
  assert len(batches) == math.ceil(len(keep) / 8)
  idx = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(idx[: len(keep)], keep)  # index order, then wrap-around
  np.testing.assert_array_equal(idx[len(keep) :], keep[: len(idx) - len(keep)])
  for b in batches:
    for row, i in enumerate(b["index"]):
      for m in ("ppg", "ecg"):
        want = preprocess.minmax(recs[i].signal(m)[None].astype(np.float32))[0]
        np.testing.assert_allclose(b[m][row], want, atol=1e-6)
  assert all(b["ppg"].dtype == np.float32 and b["ppg"].shape == (8, 1000) for b in batches)


def test_quality_and_modality_filter(dataset):
  index = index_of(dataset)
  cfg = data_cfg(dataset, min_quality_ppg=0.9, min_quality_ecg=0.85)
  seen = np.concatenate([b["index"] for b in take(train_iter(dataset, cfg=cfg), 30)])
  assert np.all(index["quality_ppg"][seen] >= 0.9)
  assert np.all(index["quality_ecg"][seen] >= 0.85)
  assert np.all(index["has_ecg"][seen])
  passing = np.flatnonzero((index["quality_ppg"] >= 0.9) & (index["quality_ecg"] >= 0.85))
  assert set(seen) == set(passing)  # 240 draws of ~40 records: every one appears
  # PPG-only models also use the records that lack ECG, and only their PPG is returned.
  cfg = data_cfg(dataset, min_quality_ppg=0.0)
  ppg_only = pipeline.make_train_iterator(
      cfg,
      global_batch_size=8,
      seed=0,
      process_index=0,
      process_count=1,
      modalities=("ppg",),
      with_index=True,
  )
  batches = take(ppg_only, 20)
  assert set(batches[0]) == {"ppg", "index"}
  seen = np.concatenate([b["index"] for b in batches])
  assert not index["has_ecg"][seen].all()
  assert pipeline.count_records(cfg, modalities=("ppg",)) == N_TRAIN


def test_every_record_once_per_epoch_and_new_order_each_epoch(dataset):
  cfg = data_cfg(dataset, min_quality_ppg=0.0, min_quality_ecg=0.0)
  n = pipeline.count_records(cfg)  # 80 paired records: 10 batches of 8
  assert n == N_TRAIN - N_TRAIN // PPG_ONLY_EVERY
  idx = np.concatenate([b["index"] for b in take(train_iter(dataset, cfg=cfg), 2 * n // 8)])
  first, second = idx[:n], idx[n:]
  assert (
      sorted(first)
      == sorted(second)
      == sorted(dataset_reader.select_records(index_of(dataset), ("ppg", "ecg"), {}))
  )
  assert not np.array_equal(first, second)


def test_determinism_and_seeds(dataset):
  a = take(train_iter(dataset, seed=1), 6)
  b = take(train_iter(dataset, seed=1), 6)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Another augmentation seed: same records, other augmentations.
  c = take(train_iter(dataset, seed=2), 6)
  assert all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  assert not all(np.array_equal(x["ecg"], y["ecg"]) for x, y in zip(a, c))
  # Another shuffle seed: another order.
  d = take(train_iter(dataset, seed=1, cfg=data_cfg(dataset, shuffle_seed=5)), 6)
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, d))


def test_process_slices_form_the_global_batch(dataset):
  """1 process == 2 processes == 4 processes (rows and augmentation), also with odd rows."""

  def batches(p, n, rows=None):
    return take(
        pipeline.make_train_iterator(
            data_cfg(dataset),
            global_batch_size=8,
            seed=3,
            process_index=p,
            process_count=n,
            rows=rows,
            with_index=True,
        ),
        12,
    )  # 12 x 8 > 1 epoch: crosses a boundary

  whole = batches(0, 1)
  for n in (2, 4):
    parts = [batches(p, n) for p in range(n)]
    for step, full in enumerate(whole):
      for k in full:
        np.testing.assert_array_equal(np.concatenate([part[step][k] for part in parts]), full[k])
  odd = batches(0, 1, rows=[1, 6])
  for step, full in enumerate(whole):
    np.testing.assert_array_equal(odd[step]["ecg"], full["ecg"][[1, 6]])
  with pytest.raises(ValueError, match="not divisible"):
    batches(0, 3)


def test_save_restore_resumes_exactly(dataset):
  it = train_iter(dataset)
  take(it, 7)  # the filtered split has ~20 records: 2-3 batches per epoch
  state = copy.deepcopy(it.get_state())
  expected = take(it, 6)  # crosses the epoch boundary
  restored = train_iter(dataset)
  restored.set_state(state)
  for x, y in zip(expected, take(restored, 6)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_start_batch_resumes_without_state(dataset):
  expected = take(train_iter(dataset, seed=5), 9)[4:]
  for x, y in zip(expected, take(train_iter(dataset, seed=5, start_batch=4), 5)):
    np.testing.assert_array_equal(x["ecg"], y["ecg"])


def test_grain_checkpoint_inside_orbax(dataset, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  it = train_iter(dataset)
  take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = take(it, 3)
  restored = train_iter(dataset)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  for x, y in zip(expected, take(restored, 3)):
    np.testing.assert_array_equal(x["ppg"], y["ppg"])


def test_eval_fixed_number_of_batches_wraps(dataset):
  it = pipeline.make_eval_iterator(
      data_cfg(dataset, min_quality_ppg=0.0, min_quality_ecg=0.0),
      global_batch_size=16,
      num_batches=3,
      process_index=0,
      process_count=1,
      with_index=True,
  )
  batches = list(it)  # 20 validation records, 18 paired
  assert len(batches) == 3
  idx = np.concatenate([b["index"] for b in batches])
  keep = dataset_reader.select_records(index_of(dataset, "validation"), ("ppg", "ecg"), {})
  np.testing.assert_array_equal(idx, np.resize(keep, 48))


# ----------------------------------------------------------------------------- augmentation


def test_shift_moves_both_modalities_together(tmp_path):
  """Records whose ppg == ecg stay equal after augmentation: one shift for the pair."""
  recs = random_records(16)
  for r in recs:
    r.ecg = r.ppg.copy()
  write_dataset(tmp_path, {"train": recs})
  cfg = data_cfg(tmp_path, min_quality_ppg=0.0, min_quality_ecg=0.0)
  cfg.augment.update(enabled=True, scale_prob=0.0, shift_prob=1.0, ecg_flip_prob=0.0)
  clean = next(
      pipeline.make_eval_iterator(
          cfg,
          global_batch_size=16,
          split="train",
          process_index=0,
          process_count=1,
          with_index=True,
      )
  )
  order = np.argsort(clean["index"])
  moved = 0
  for b in take(train_iter(tmp_path, cfg=cfg, batch=16), 4):
    np.testing.assert_array_equal(b["ppg"], b["ecg"])
    moved += np.sum(np.any(b["ppg"] != clean["ppg"][order][b["index"]], axis=1))
  assert moved > 40  # 64 draws, P(no shift) = 1/13
  cfg.augment.update(ecg_flip_prob=1.0)
  b = next(train_iter(tmp_path, cfg=cfg, batch=16))
  np.testing.assert_allclose(b["ecg"], -b["ppg"], atol=1e-6)


def test_shift_is_edge_padded():
  x = np.arange(10, dtype=np.float32)[None].repeat(3, 0)
  y = augment.shift(x, np.array([2, -3, 0]))
  np.testing.assert_array_equal(y[0], [0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(y[1], [3, 4, 5, 6, 7, 8, 9, 9, 9, 9])
  np.testing.assert_array_equal(y[2], x[2])


def test_augment_draws_depend_on_position_not_batch_layout():
  x = np.random.default_rng(0).standard_normal((12, 50)).astype(np.float32)
  params = augment.AugmentParams(max_shift=4)
  pos = np.arange(100, 112)
  full = augment.augment({"ppg": x, "ecg": x}, pos, 7, params)
  half = augment.augment({"ppg": x[6:], "ecg": x[6:]}, pos[6:], 7, params)
  np.testing.assert_array_equal(full["ecg"][6:], half["ecg"])
  u = augment.uniform(7, 1, np.arange(20000))
  assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
  with pytest.raises(ValueError, match="exclude each other"):
    augment.AugmentParams(scale_prob=0.7, shift_prob=0.5)


def test_minmax_range_and_flat_rows():
  x = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]], np.float32)
  np.testing.assert_array_equal(preprocess.minmax(x), [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------- decoding


def test_records_in_another_layout_use_the_general_decoder(tmp_path):
  """Waveforms not at the end of the record (another writer's key order) still decode."""
  recs = random_records(10)
  raw = []
  for r in recs:
    m = msgpack.unpackb(record.encode(r), raw=False)
    m = {"v": m.pop("v"), "ecg": m.pop("ecg"), "ppg": m.pop("ppg"), **m}  # waveforms first
    raw.append(msgpack.packb(m, use_bin_type=True))
  write_dataset(tmp_path, {"train": raw})
  b = next(
      pipeline.make_eval_iterator(
          data_cfg(tmp_path, min_quality_ppg=0.0, min_quality_ecg=0.0),
          global_batch_size=10,
          split="train",
          process_index=0,
          process_count=1,
          with_index=True,
      )
  )
  for row, i in enumerate(b["index"]):
    np.testing.assert_allclose(
        b["ecg"][row],
        preprocess.minmax(recs[i].ecg[None].astype(np.float16).astype(np.float32))[0],
        atol=1e-6,
    )


def test_batch_read_equals_grain_array_record_source(dataset):
  import grain

  reader = dataset_reader.ShardReader(str(dataset), "train")
  source = grain.sources.ArrayRecordDataSource(reader.paths)
  positions = np.random.default_rng(0).permutation(N_TRAIN)[:40]
  assert reader.read_raw(positions) == source.__getitems__(positions.tolist())
  with pytest.raises(IndexError):
    reader.read_raw(np.array([N_TRAIN]))


# ----------------------------------------------------------------------------- errors


def test_missing_shard_is_named(dataset, tmp_path):
  d = tmp_path / "ds"
  import shutil

  shutil.copytree(dataset, d)
  (d / "train-00001-of-00003.array_record").unlink()
  with pytest.raises(shards.DatasetError, match="train-00001-of-00003.array_record"):
    train_iter(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_bytes"])
def test_corrupt_shard_is_named(dataset, tmp_path, damage):
  d = tmp_path / "ds"
  import shutil

  shutil.copytree(dataset, d)
  shard = d / "train-00002-of-00003.array_record"
  data = bytearray(shard.read_bytes())
  if damage == "truncate":
    data = data[: len(data) // 3]
  elif damage == "garbage":
    data = bytearray(np.random.default_rng(0).bytes(len(data)))
  else:  # damage record payloads but keep the footer: found only when the batch is read
    for i in range(200, 60000, 500):
      data[i] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(shards.DatasetError, match="train-00002-of-00003.array_record"):
    it = pipeline.make_eval_iterator(
        data_cfg(d, min_quality_ppg=0.0, min_quality_ecg=0.0),
        global_batch_size=8,
        split="train",
        process_index=0,
        process_count=1,
        read_threads=0,
    )
    list(it)


def test_empty_filter_and_bad_arguments(dataset):
  with pytest.raises(shards.DatasetError, match="no record"):
    train_iter(dataset, cfg=data_cfg(dataset, min_quality_ppg=1.5))
  with pytest.raises(shards.DatasetError, match="split 'test' is empty"):
    pipeline.make_eval_iterator(
        data_cfg(dataset), global_batch_size=8, split="test", process_index=0, process_count=1
    )
  with pytest.raises(ValueError, match="normalize"):
    train_iter(dataset, cfg=data_cfg(dataset, normalize="zscore"))
  with pytest.raises(shards.DatasetError, match="segment_length is 1250"):
    train_iter(dataset, cfg=data_cfg(dataset, segment_length=1250))


def test_subject_ids_when_asked(dataset):
  """`data.with_subject` adds the per-split subject index of each row (contrastive positives)."""
  recs = decoded(dataset)
  subject_ids = shards.read_manifest(dataset)["splits"]["train"]["subject_ids"]
  assert "subject" not in next(train_iter(dataset))
  b = next(train_iter(dataset, cfg=data_cfg(dataset, with_subject=True)))
  assert b["subject"].dtype == np.int32 and b["subject"].shape == (8,)
  assert [subject_ids[s] for s in b["subject"]] == [recs[i].subject_id for i in b["index"]]
