"""Input-pipeline benchmark: `python -m xmae_jax.bench data [--data-dir DIR] --batch-size B
--workers N [--steps S]`.

Measures the training stream exactly as the trainer builds it (`make_train_iterator`: quality
filter, shuffle, augmentation, normalization, batching; no device transfer) and prints one JSON
line. Without --data-dir it first writes a dataset of --make-synthetic random-waveform records
into a temporary directory (waveforms are what matters for speed, not their physiology).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from typing import Sequence

import numpy as np

from xmae_jax.data import preprocess
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

SEGMENT_LENGTH = 1000
SAMPLING_RATE = 100


def random_records(num_records: int, *, seed: int = 0, records_per_subject: int = 20,
                   quality_range: tuple[float, float] = (0.8, 1.0), ppg_only_every: int = 0,
                   length: int = SEGMENT_LENGTH) -> list[record_lib.Record]:
  """Records with sine-plus-noise waveforms, random qualities and a little metadata.

  Record j has segment_id f"seg{j}"; every `ppg_only_every`-th record (if > 0) lacks ecg.
  """
  rng = np.random.default_rng(seed)
  t = np.arange(length) / SAMPLING_RATE
  out = []
  for j in range(num_records):
    hr = rng.uniform(0.8, 2.0)
    ppg = np.sin(2 * np.pi * hr * t + rng.uniform(0, 2 * np.pi))
    ecg = np.sin(2 * np.pi * hr * t) ** 15
    ppg += 0.05 * rng.standard_normal(length)
    ecg += 0.05 * rng.standard_normal(length)
    has_ecg = not (ppg_only_every and j % ppg_only_every == ppg_only_every - 1)
    out.append(record_lib.Record(
        subject_id=f"subj{j // records_per_subject}", segment_id=f"seg{j}", source="random",
        ppg=preprocess.minmax(ppg), ecg=preprocess.minmax(ecg) if has_ecg else None,
        quality_ppg=float(rng.uniform(*quality_range)),
        quality_ecg=float(rng.uniform(*quality_range)) if has_ecg else math.nan,
        meta={"age": float(rng.uniform(20, 80)), "sex": int(rng.integers(0, 2)),
              "sbp": float(rng.uniform(100, 160))}))
  return out


def write_dataset(out_dir: str | os.PathLike, splits: dict[str, Sequence[record_lib.Record]],
                  *, records_per_shard: int = 4096) -> dict:
  """Writes records as a dataset directory (shards, indexes, manifest); returns the manifest."""
  entries = {name: shards.write_split(out_dir, name, recs, records_per_shard=records_per_shard)
             for name, recs in splits.items()}
  return shards.write_manifest(out_dir, entries, sampling_rate=SAMPLING_RATE,
                               segment_length=SEGMENT_LENGTH, preprocessing={"random": True},
                               sources=["random"])


def measure(data_dir: str, *, batch_size: int, workers: int, steps: int, warmup: int = 5,
            read_threads: int | None = None, seed: int = 0) -> dict:
  """Batches/s and segments/s of the training stream after `warmup` batches."""
  from xmae_jax import config_lib  # pylint: disable=g-import-not-at-top
  from xmae_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = config_lib.data_config("paper")
  cfg.dir = str(data_dir)
  cfg.num_workers = workers
  it = pipeline.make_train_iterator(cfg, global_batch_size=batch_size, seed=seed,
                                    process_index=0, process_count=1, read_threads=read_threads)
  try:
    for _ in range(warmup):
      next(it)
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = 0
    for _ in range(steps):
      rows += len(next(it)["ppg"])
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
  finally:
    pipeline.close(it)
  return {"benchmark": "data", "segments_per_s": round(rows / elapsed, 1),
          "batches_per_s": round(steps / elapsed, 2), "workers": workers,
          # Segments per CPU-second of this process, threads included (only without worker
          # processes, whose CPU is not counted): on a shared machine it moves less with
          # other load than the wall-clock rate.
          "segments_per_cpu_s": round(rows / cpu, 1) if cpu > 0 and workers == 0 else None,
          # With workers: what the main process spends to receive the batches, the ceiling
          # that worker scaling runs into.
          "main_process_segments_per_cpu_s": round(rows / cpu, 1) if cpu > 0 else None,
          "batch_size": batch_size, "steps": steps, "read_threads": read_threads,
          "records_used": pipeline.count_records(cfg), "cpu_count": os.cpu_count()}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m xmae_jax.bench data", description=__doc__)
  p.add_argument("--data-dir", help="a dataset directory (default: write a random one)")
  p.add_argument("--make-synthetic", type=int, default=20000,
                 help="records of the random dataset written when --data-dir is not given")
  p.add_argument("--batch-size", type=int, default=512)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--read-threads", type=int, default=None,
                 help="in-process read threads (default: the pipeline's)")
  return p.parse_args(argv)


def main(argv: Sequence[str]) -> None:
  args = parse_args(argv)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():   # Grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory(prefix="xmae_bench_data_") as tmp:
    data_dir = args.data_dir
    if not data_dir:
      data_dir = tmp
      write_dataset(data_dir, {"train": random_records(args.make_synthetic,
                                                       quality_range=(0.85, 1.0))})
    result = measure(data_dir, batch_size=args.batch_size, workers=args.workers,
                     steps=args.steps, read_threads=args.read_threads)
  print(json.dumps(result), flush=True)
