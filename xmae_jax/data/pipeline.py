"""The Grain input pipeline: a dataset directory -> this host's rows of every global batch.

The chain, designed for throughput (batch-level work, nothing per record in Python that can
be avoided) and for topology independence:

  {split}-index.npz  -> quality filter + modality requirement, resolved on the index
                        (no record is decoded to decide whether it is used)
  seeded shuffle     -> one permutation of the kept records per epoch, a pure function of
                        (data.shuffle_seed, epoch): different every epoch, identical everywhere
  global batches     -> global batch i holds stream positions [i*B, (i+1)*B) (B = global batch);
                        epochs follow each other without a gap, so a batch may span two
  per-process rows   -> process p takes rows [p*b, (p+1)*b) of every global batch (b = B / P),
                        or the rows its devices hold on the mesh (`rows=` from
                        `training.sharding.host_rows`)
  batch read         -> the rows' float16 waveform bytes, gathered from the memory-mapped
                        shards with one numpy index per shard and modality (`mapped.py`;
                        each shard is checked once against array_record, which also reads
                        shards and records in any other layout)
  vectorized decode  -> one `np.take` per modality: float16 bits -> float32
  augmentation       -> `augment.augment`, keyed by (seed, global stream position) (train only)
  normalization      -> per-segment min-max to [-1, 1]

Element i of the Grain `MapDataset` built here IS this host's part of global batch i, so the
iterator state is just the next batch index (tiny JSON, saved inside Orbax checkpoints with
`grain.checkpoint.CheckpointSave`), a restored iterator yields exactly what the uninterrupted
one would, and `mp_prefetch` workers produce the same batches as in-process reading.
Shard reading and decoding live in `dataset_reader.py`, the dataset whose element is one host
batch in `global_batch.py`; placing host batches on devices is the
trainer's (`training.sharding.place_batch`), so this layer never imports JAX's device side.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

from xmae_jax import errors
from xmae_jax.data import augment as augment_lib
from xmae_jax.data import dataset_reader
from xmae_jax.data import global_batch
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

DatasetError = shards.DatasetError


# ----------------------------------------------------------------------------- record selection


def _modalities(data_cfg: Mapping[str, Any], modalities: Sequence[str] | None) -> tuple[str, ...]:
  mods = tuple(modalities if modalities is not None else data_cfg["modalities"])
  if not mods or any(m not in record_lib.MODALITIES for m in mods):
    raise errors.XmaeError(f"modalities {mods!r}: choose from {record_lib.MODALITIES}")
  return mods


def _min_quality(data_cfg: Mapping[str, Any]) -> dict[str, float | None]:
  return {m: data_cfg.get(f"min_quality_{m}") for m in record_lib.MODALITIES}


def count_records(
    data_cfg: Mapping[str, Any], split: str = "train", modalities: Sequence[str] | None = None
) -> int:
  """How many records of `split` the pipeline uses (after the filter); cheap (index only)."""
  _, index = shards.split_paths(data_cfg["dir"], split)
  return len(
      dataset_reader.select_records(
          index, _modalities(data_cfg, modalities), _min_quality(data_cfg)
      )
  )


def steps_per_epoch(
    data_cfg: Mapping[str, Any],
    global_batch_size: int,
    split: str = "train",
    modalities: Sequence[str] | None = None,
) -> int:
  """Global batches per pass over the filtered split (at least 1)."""
  return max(1, count_records(data_cfg, split, modalities) // global_batch_size)


# ----------------------------------------------------------------------------- public API


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise errors.XmaeError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _local_rows(
    global_batch_size: int, process_index: int, process_count: int, rows: Sequence[int] | None
) -> np.ndarray:
  if global_batch_size <= 0:
    raise errors.XmaeError(f"global batch size {global_batch_size} must be positive")
  if rows is not None:
    picked = np.asarray(rows, np.int64)
    if (
        picked.ndim != 1
        or len(picked) == 0
        or picked.min() < 0
        or picked.max() >= global_batch_size
    ):
      raise errors.XmaeError(f"rows must be a non-empty 1-D set within [0, {global_batch_size})")
    return picked
  if global_batch_size % process_count:
    raise errors.XmaeError(
        f"global batch size {global_batch_size} is not divisible by the "
        f"{process_count} processes"
    )
  local = global_batch_size // process_count
  return np.arange(process_index * local, (process_index + 1) * local, dtype=np.int64)


def _build(
    data_cfg,
    *,
    split,
    global_batch_size,
    process_index,
    process_count,
    rows,
    modalities,
    train,
    seed,
    num_batches,
    with_index,
) -> global_batch.GlobalBatchDataset:
  mods = _modalities(data_cfg, modalities)
  reader, records = dataset_reader.open_split(data_cfg["dir"], split, mods, _min_quality(data_cfg))
  want = data_cfg.get("segment_length")
  if want and int(want) != reader.segment_length:
    raise DatasetError(
        f"{data_cfg['dir']}: segments of {reader.segment_length} samples, the "
        f"config's data.segment_length is {want}"
    )
  if len(records) == 0:
    raise DatasetError(
        f"{data_cfg['dir']} split {split!r}: no record has {'+'.join(mods)} with quality >= "
        f"{data_cfg.get('min_quality_ppg')} (ppg) / {data_cfg.get('min_quality_ecg')} (ecg) "
        f"out of {len(reader.index['subject'])}"
    )
  p, n = _process(process_index, process_count)
  local_rows = _local_rows(global_batch_size, p, n, rows)
  if train:
    length = global_batch.INFINITE
    augment = augment_lib.AugmentParams.from_config(data_cfg.get("augment"))
    shuffle_seed = int(data_cfg["shuffle_seed"])
  else:
    length = num_batches if num_batches else -(-len(records) // global_batch_size)
    augment = augment_lib.AugmentParams(enabled=False)
    shuffle_seed = None
  return global_batch.GlobalBatchDataset(
      reader,
      records,
      global_batch_size=global_batch_size,
      rows=local_rows,
      length=length,
      modalities=mods,
      shuffle_seed=shuffle_seed,
      seed=seed,
      augment=augment,
      normalize=str(data_cfg["normalize"]),
      with_index=with_index,
      subjects=(np.asarray(reader.index["subject"]) if data_cfg["with_subject"] else None),
  )


def _iterate(
    ds: grain.MapDataset,
    data_cfg,
    num_workers: int | None,
    read_threads: int | None,
    prefetch: int | None,
) -> grain.DatasetIterator:
  workers = int(data_cfg["num_workers"] if num_workers is None else num_workers)
  if workers < 0:
    raise errors.XmaeError(f"num_workers={workers} must be >= 0")
  threads = int(data_cfg["read_threads"] if read_threads is None else read_threads)
  buffer = int(data_cfg["prefetch"] if prefetch is None else prefetch)
  # Each read thread works on its own batch, so the buffer holds at least one per thread.
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(
          num_threads=threads, prefetch_buffer_size=max(buffer, threads) if threads else 0
      )
  )
  if workers > 0:
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer)
    )
  return iter(it_ds)


def make_train_dataset(
    data_cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    split: str = "train",
    process_index: int | None = None,
    process_count: int | None = None,
    rows: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
    with_index: bool = False,
) -> global_batch.GlobalBatchDataset:
  """The endless training stream as a random-access Grain `MapDataset` of host batches."""
  return _build(
      data_cfg,
      split=split,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      rows=rows,
      modalities=modalities,
      train=True,
      seed=seed,
      num_batches=None,
      with_index=with_index,
  )


def make_train_iterator(
    data_cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    split: str = "train",
    process_index: int | None = None,
    process_count: int | None = None,
    rows: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
    with_index: bool = False,
    num_workers: int | None = None,
    read_threads: int | None = None,
    prefetch: int | None = None,
    start_batch: int = 0,
) -> grain.DatasetIterator:
  """Endless iterator of host batches: {modality: float32 (local_batch, L)} (+ `index`).

  `data_cfg` is the config's `data` section (dir, min_quality_*, modalities, shuffle_seed,
  num_workers, normalize, augment; optional read_threads, prefetch). The order is set by
  `data_cfg.shuffle_seed`, the augmentation draws by `seed`. process_index/process_count
  default to JAX's; `rows` overrides the contiguous block (see `training.sharding.host_rows`).

  Resuming: the iterator has get_state/set_state and works with
  `grain.checkpoint.CheckpointSave/CheckpointRestore` inside Orbax (state files are per
  process and per worker layout). Because element i is global batch i, `start_batch=step`
  resumes exactly as well, on any number of processes or workers.
  """
  ds = make_train_dataset(
      data_cfg,
      global_batch_size=global_batch_size,
      seed=seed,
      split=split,
      process_index=process_index,
      process_count=process_count,
      rows=rows,
      modalities=modalities,
      with_index=with_index,
  )
  if start_batch < 0:
    raise errors.XmaeError(f"start_batch={start_batch} must be >= 0")
  return _iterate(
      ds[start_batch:] if start_batch else ds, data_cfg, num_workers, read_threads, prefetch
  )


class EvalBatches:
  """A fixed set of evaluation batches over one split, built once and iterated many times.

  The shards are opened and the selection resolved once, when it is built; the first pass reads
  the batches (through Grain, with the config's read threads and prefetch) and keeps them, so
  every later pass yields the same arrays without reading again. The batches are deterministic
  (index order, no augmentation), which is what makes keeping them exact. Kept arrays are
  read-only: a caller that changed one in place would change every later evaluation.
  `cache=False` reads on every pass instead (a split too large to keep in memory).
  """

  def __init__(
      self,
      dataset: global_batch.GlobalBatchDataset,
      data_cfg: Mapping[str, Any],
      *,
      num_workers: int | None = None,
      read_threads: int | None = None,
      prefetch: int | None = None,
      cache: bool = True,
  ):
    self.dataset = dataset
    self._data_cfg = data_cfg
    self._options = (num_workers or 0, read_threads, prefetch)
    self._cache: list[dict[str, np.ndarray]] | None = [] if cache else None

  def __len__(self) -> int:
    return len(self.dataset)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    kept = self._cache
    if kept is not None:
      yield from list(kept)
      if len(kept) == len(self.dataset):
        return
    start = 0 if kept is None else len(kept)
    it = _iterate(self.dataset[start:] if start else self.dataset, self._data_cfg, *self._options)
    try:
      for batch in it:
        if kept is not None and len(kept) == start:  # this pass is the one filling the cache
          for v in batch.values():
            v.flags.writeable = False
          kept.append(batch)
          start += 1
        yield batch
    finally:
      close(it)


def make_eval_dataset(
    data_cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    split: str = "validation",
    num_batches: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    rows: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
    with_index: bool = False,
    num_workers: int | None = None,
    read_threads: int | None = None,
    prefetch: int | None = None,
    cache: bool = True,
) -> EvalBatches:
  """The evaluation batches of `split` in index order (no shuffle, no augmentation), built once.

  By default one pass: ceil(N / B) global batches; the last one is completed by wrapping
  around to the first records (every batch is full, so every process has the same shape;
  a few records count twice in that pass). `num_batches` fixes the count instead (wrapping
  as needed). Iterate it once per evaluation; see `EvalBatches`. Worker processes only if
  `num_workers` is given (starting them for every short evaluation would cost more than it
  saves).
  """
  ds = _build(
      data_cfg,
      split=split,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      rows=rows,
      modalities=modalities,
      train=False,
      seed=0,
      num_batches=num_batches,
      with_index=with_index,
  )
  return EvalBatches(
      ds,
      data_cfg,
      num_workers=num_workers,
      read_threads=read_threads,
      prefetch=prefetch,
      cache=cache,
  )


def make_eval_iterator(
    data_cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    split: str = "validation",
    num_batches: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    rows: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
    with_index: bool = False,
    num_workers: int | None = None,
    read_threads: int | None = None,
    prefetch: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` as `make_eval_dataset` builds it, read and not kept.

  For a single pass; a run that evaluates repeatedly builds `make_eval_dataset` once instead.
  `close(iterator)` stops its worker processes if it is abandoned early.
  """
  return iter(
      make_eval_dataset(
          data_cfg,
          global_batch_size=global_batch_size,
          split=split,
          num_batches=num_batches,
          process_index=process_index,
          process_count=process_count,
          rows=rows,
          modalities=modalities,
          with_index=with_index,
          num_workers=num_workers,
          read_threads=read_threads,
          prefetch=prefetch,
          cache=False,
      )
  )


def close(iterator) -> None:
  """Stops worker processes of an iterator built with num_workers > 0 (no-op otherwise)."""
  fn = getattr(iterator, "close", None)
  if fn is not None:
    fn()


__all__ = [
    "DatasetError",
    "EvalBatches",
    "close",
    "count_records",
    "make_eval_dataset",
    "make_eval_iterator",
    "make_train_dataset",
    "make_train_iterator",
    "steps_per_epoch",
]
