"""Input-pipeline benchmark: `python -m xmae_jax.benchmarks data [--data-dir DIR] [--batch-size B]
[--workers 0,1,2] [--read-threads T,...] [--steps S] [--stages]`.

Measures the training stream exactly as the trainer builds it (`make_train_iterator`: quality
filter, shuffle, augmentation, normalization, batching; no device transfer; glibc malloc set up
as xmae-train sets it) and prints one JSON line per worker count and read-thread count, after
one line with the machine's ceiling (`copy_rate`: a plain copy of a batch's bytes) and, with
--stages, one with the CPU time of each step of a batch (`stages`). Without
--data-dir it first writes a dataset of --make-synthetic random-waveform records into a
temporary directory (waveforms are what matters for speed, not their physiology).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Sequence

import numpy as np

from xmae_jax.benchmarks import bench_common as common
from xmae_jax.data import preprocess
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

SEGMENT_LENGTH = 1000
SAMPLING_RATE = 100


def random_records(
    num_records: int,
    *,
    seed: int = 0,
    records_per_subject: int = 20,
    quality_range: tuple[float, float] = (0.8, 1.0),
    ppg_only_every: int = 0,
    length: int = SEGMENT_LENGTH,
) -> list[record_lib.Record]:
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
    out.append(
        record_lib.Record(
            subject_id=f"subj{j // records_per_subject}",
            segment_id=f"seg{j}",
            source="random",
            ppg=preprocess.minmax(ppg),
            ecg=preprocess.minmax(ecg) if has_ecg else None,
            quality_ppg=float(rng.uniform(*quality_range)),
            quality_ecg=float(rng.uniform(*quality_range)) if has_ecg else math.nan,
            meta={
                "age": float(rng.uniform(20, 80)),
                "sex": int(rng.integers(0, 2)),
                "sbp": float(rng.uniform(100, 160)),
            },
        )
    )
  return out


def write_dataset(
    out_dir: str | os.PathLike,
    splits: dict[str, Sequence[record_lib.Record]],
    *,
    records_per_shard: int = 4096,
) -> dict:
  """Writes records as a dataset directory (shards, indexes, manifest); returns the manifest."""
  entries = {
      name: shards.write_split(out_dir, name, recs, records_per_shard=records_per_shard)
      for name, recs in splits.items()
  }
  return shards.write_manifest(
      out_dir,
      entries,
      sampling_rate=SAMPLING_RATE,
      segment_length=SEGMENT_LENGTH,
      preprocessing={"random": True},
      sources=["random"],
  )


def measure(
    data_dir: str,
    *,
    batch_size: int,
    workers: int,
    steps: int,
    warmup: int = 5,
    read_threads: int | None = None,
    seed: int = 0,
) -> dict:
  """Batches/s and segments/s of the training stream after `warmup` batches."""
  from xmae_jax import config_lib  # pylint: disable=g-import-not-at-top
  from xmae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  cfg = config_lib.data_config("paper")
  cfg.dir = str(data_dir)
  cfg.num_workers = workers
  if read_threads is not None:
    cfg.read_threads = read_threads
  start = time.perf_counter()
  it = pipeline.make_train_iterator(
      cfg, global_batch_size=batch_size, seed=seed, process_index=0, process_count=1
  )
  try:
    next(it)
    # The first batch also opens the shards and checks each one once (data/mapped.py).
    first_batch_s = time.perf_counter() - start
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
  return {
      "benchmark": "data",
      "segments_per_s": round(rows / elapsed, 1),
      "batches_per_s": round(steps / elapsed, 2),
      "workers": workers,
      "read_threads": cfg.read_threads,
      # Segments per CPU-second of this process, threads included (only without worker
      # processes, whose CPU is not counted): on a shared machine it moves less with
      # other load than the wall-clock rate.
      "segments_per_cpu_s": round(rows / cpu, 1) if cpu > 0 and workers == 0 else None,
      # With workers: what the main process spends to receive the batches, the ceiling
      # that worker scaling runs into.
      "main_process_segments_per_cpu_s": round(rows / cpu, 1) if cpu > 0 else None,
      "first_batch_s": round(first_batch_s, 3),
      "batch_size": batch_size,
      "steps": steps,
      "records_used": pipeline.count_records(cfg),
      "cpu_count": os.cpu_count(),
  }


def stages(data_dir: str, *, batch_size: int, steps: int = 20, seed: int = 0) -> dict:
  """CPU milliseconds per batch of each step of one training batch, and of the array_record
  read that the mapped read replaced (run in one thread, one step after the other).

  select: stream positions -> record positions; gather: waveform bytes from the mapped shards;
  decode: float16 -> float32; normalize: per-segment min-max; array_record_read: the same
  records through array_record (one `bytes` per record), for comparison.
  """
  from xmae_jax import config_lib  # pylint: disable=g-import-not-at-top
  from xmae_jax.data import augment  # pylint: disable=g-import-not-at-top
  from xmae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  cfg = config_lib.data_config("paper")
  cfg.dir = str(data_dir)
  ds = pipeline.make_train_dataset(
      cfg, global_batch_size=batch_size, seed=seed, process_index=0, process_count=1
  )
  reader, mods = ds.reader, ds.modalities
  start = time.process_time()
  ds[0]  # maps and checks every shard the batch touches
  spent = {"check_first_batch": time.process_time() - start}
  for i in range(1, steps + 1):
    marks = [time.process_time()]
    records = ds.record_positions(ds.positions(i))
    marks.append(time.process_time())
    reader.mapped_shards.waveforms(records, mods)
    marks.append(time.process_time())
    batch = reader.read(records, mods)  # gathers again, then decodes
    marks.append(time.process_time())
    augment.normalize(batch, cfg.normalize)
    marks.append(time.process_time())
    reader.read_raw(records)
    marks.append(time.process_time())
    select, gather, read, normalize, array_record = np.diff(marks)
    for name, value in (
        ("select", select),
        ("gather", gather),
        ("decode", read - gather),
        ("normalize", normalize),
        ("array_record_read", array_record),
    ):
      spent[name] = spent.get(name, 0.0) + value
  ms = {
      name: round(1e3 * value / (1 if name == "check_first_batch" else steps), 3)
      for name, value in spent.items()
  }
  batch_ms = ms["select"] + ms["gather"] + ms["decode"] + ms["normalize"]
  return {
      "benchmark": "data_stages",
      "cpu_ms_per_batch": ms,
      "segments_per_cpu_s": round(1e3 * batch_size / batch_ms, 1),
      "batch_size": batch_size,
      "steps": steps,
      "cpu_count": os.cpu_count(),
  }


def copy_rate(batch_size: int, batches: int = 16, repeats: int = 3) -> dict:
  """The physical ceiling: segments/s of a plain numpy copy of batches' output bytes.

  A batch is ppg + ecg float32 (B, L); the pipeline writes at least that much (and reads the
  float16 half of it), so no pipeline on this machine produces batches faster than this copy.
  The source is `batches` batches (more than a CPU cache holds) copied one after the other,
  as the pipeline meets its records: in memory, not in cache.
  """
  src = np.random.default_rng(0).standard_normal(
      (batches, 2, batch_size, SEGMENT_LENGTH), np.float32
  )
  dst = np.empty_like(src[0])
  np.copyto(dst, src[0])
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    for batch in src:
      np.copyto(dst, batch)
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  rows = repeats * batches * batch_size
  return {
      "benchmark": "data_copy",
      "segments_per_s": round(rows / elapsed, 1),
      "segments_per_cpu_s": round(rows / cpu, 1) if cpu > 0 else None,
      "bytes_per_batch": int(dst.nbytes),
      "batch_size": batch_size,
  }


def _counts(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
  if not values or min(values) < 0:
    raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 0")
  return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m xmae_jax.benchmarks data", description=__doc__)
  p.add_argument("--data-dir", help="a dataset directory (default: write a random one)")
  p.add_argument(
      "--make-synthetic",
      type=int,
      default=20000,
      help="records of the random dataset written when --data-dir is not given",
  )
  p.add_argument("--batch-size", type=int, default=512)
  p.add_argument(
      "--workers",
      type=_counts,
      default=[0, 1, 2],
      help="Grain worker processes; a comma-separated list measures each",
  )
  p.add_argument("--steps", type=int, default=100)
  p.add_argument(
      "--read-threads",
      type=_counts,
      default=[0, 1, 2],
      help="read threads per process (0: read in the calling thread); a "
      "comma-separated list measures each (xmae-train uses data.read_threads)",
  )
  p.add_argument(
      "--stages",
      action="store_true",
      help="also print the CPU time per batch of each step (one more JSON line)",
  )
  common.add_host_memory_flag(p)
  return p.parse_args(argv)


def main(argv: Sequence[str]) -> None:
  args = parse_args(argv)
  common.apply_host_memory_flag(args)  # as xmae-train does
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  common.emit(copy_rate(args.batch_size))
  with tempfile.TemporaryDirectory(prefix="xmae_bench_data_") as tmp:
    data_dir = args.data_dir
    if not data_dir:
      data_dir = tmp
      write_dataset(
          data_dir, {"train": random_records(args.make_synthetic, quality_range=(0.85, 1.0))}
      )
    if args.stages:
      common.emit(stages(data_dir, batch_size=args.batch_size))
    for workers in args.workers:
      for threads in args.read_threads:
        common.emit(
            measure(
                data_dir,
                batch_size=args.batch_size,
                workers=workers,
                steps=args.steps,
                read_threads=threads,
            )
        )
