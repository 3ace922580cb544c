"""The dataset behind the input pipeline: element i = this host's rows of global batch i.

`pipeline.py` builds it (record selection, rows per process, train or eval settings) and
iterates it through Grain; this module is what one element is: the stream positions of the
host's rows, the per-epoch shuffle that maps them to records, the batch read, augmentation and
normalization. Picklable for Grain's worker processes (`dataset_reader.ShippedToWorkers`).
"""

from __future__ import annotations

import collections
import sys
import threading
from typing import Sequence

import grain
import numpy as np

from xmae_jax.data import augment as augment_lib
from xmae_jax.data import dataset_reader

INFINITE = sys.maxsize  # length of the repeated training stream (as grain's repeat(None))


class GlobalBatchDataset(dataset_reader.ShippedToWorkers, grain.MapDataset):
  """Element i = this host's rows of global batch i, as a dict of numpy arrays.

  Args:
    reader: the split's `reader.ShardReader`.
    records: the record positions the stream draws from (after the filter), in index order.
    global_batch_size: B.
    rows: which rows of each global batch this host produces (sorted, within [0, B)).
    length: number of batches (`INFINITE` for the repeated training stream).
    shuffle_seed: None for the fixed index order (eval), else the per-epoch shuffle seed.
    seed / augment: the augmentation seed and parameters (`augment.enabled=False` for eval).
    normalize: "minmax" or "none".
    with_index: also return `index` (int64 record positions), for tests and bookkeeping.
    subjects: per-record subject index of the split (from the index file); when given, batches
      carry `subject` (int32), which subject-level contrastive positives need.
  """

  _PERM_CACHE = 2  # epochs whose permutation is kept (a batch spans at most two, if B <= N)

  def __init__(
      self,
      reader: dataset_reader.ShardReader,
      records: np.ndarray,
      *,
      global_batch_size: int,
      rows: np.ndarray,
      length: int,
      modalities: Sequence[str],
      shuffle_seed: int | None,
      seed: int,
      augment: augment_lib.AugmentParams,
      normalize: str,
      with_index: bool = False,
      subjects: np.ndarray | None = None,
  ):
    super().__init__()
    self._reader = reader
    self._records = records
    self._global_batch = int(global_batch_size)
    self._rows = np.asarray(rows, np.int64)
    self._length = int(length)
    self._modalities = tuple(modalities)
    self._shuffle_seed = shuffle_seed
    self._seed = int(seed)
    self._augment = augment
    self._normalize = normalize
    self._with_index = with_index
    self._subjects = subjects
    self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()
    augment_lib.normalize({}, normalize)  # validates the method name now, not at batch 0

  def _worker_state(self, state: dict) -> None:
    state["_perms"] = collections.OrderedDict()  # recomputed in the worker, never shipped

  def __len__(self) -> int:
    return self._length

  @property
  def reader(self) -> dataset_reader.ShardReader:
    return self._reader

  @property
  def modalities(self) -> tuple[str, ...]:
    return self._modalities

  def __str__(self) -> str:
    return (
        f"GlobalBatchDataset(records={len(self._records)}, B={self._global_batch}, "
        f"rows={len(self._rows)}, shuffle_seed={self._shuffle_seed})"
    )

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is None:
      rng = np.random.default_rng([int(self._shuffle_seed) & 0xFFFFFFFF, epoch])
      perm = rng.permutation(len(self._records))
      with self._lock:
        self._perms[epoch] = perm
        while len(self._perms) > self._PERM_CACHE:
          self._perms.popitem(last=False)
    return perm

  def positions(self, batch_index: int) -> np.ndarray:
    """Global stream positions of this host's rows of global batch `batch_index`."""
    return batch_index * self._global_batch + self._rows

  def record_positions(self, stream_positions: np.ndarray) -> np.ndarray:
    n = len(self._records)
    if self._shuffle_seed is None:
      return self._records[stream_positions % n]
    epochs = stream_positions // n
    order = np.empty_like(stream_positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      order[sel] = self._permutation(int(epoch))[stream_positions[sel] % n]
    return self._records[order]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < self._length:
      raise IndexError(f"batch {index} out of range [0, {self._length})")
    stream = self.positions(index)
    recs = self.record_positions(stream)
    batch = self._reader.read(recs, self._modalities)
    batch = augment_lib.augment(batch, stream, self._seed, self._augment)
    batch = augment_lib.normalize(batch, self._normalize)
    if self._with_index:
      batch["index"] = recs
    if self._subjects is not None:
      batch["subject"] = self._subjects[recs].astype(np.int32)
    return batch
