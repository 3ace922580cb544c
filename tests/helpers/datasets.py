"""Datasets and windows built in the test: prepared dataset directories (written record by
record, or prepared from the simulator through the real path), signal windows, real-record rows."""

from pathlib import Path

import numpy as np


def synthetic_dataset(tmp_path_factory, num_subjects: int, minutes_per_subject: float) -> Path:
  """A small simulator dataset prepared through the real path (seed 0, one worker, quiet)."""
  from xmae_jax.data import prepare

  out = tmp_path_factory.mktemp("synthetic")
  prepare.prepare_dataset(
      "synthetic",
      None,
      out,
      workers=1,
      seed=0,
      progress=False,
      source_options={"num_subjects": num_subjects, "minutes_per_subject": minutes_per_subject},
      log=lambda *a, **k: None,
  )
  return out


def write_dataset(out, splits):
  """A prepared dataset directory at `out` of {split: [Record, ...]} (100 Hz, 10-s windows)."""
  from xmae_jax.data import shards

  entries = {name: shards.write_split(out, name, recs) for name, recs in splits.items()}
  shards.write_manifest(
      out, entries, sampling_rate=100, segment_length=1000, preprocessing={}, sources=["test"]
  )
  return out


def stored_windows(dataset, splits=("train", "test")):
  """{segment id: {modality: window}} of every record with PPG, as stored (float16 -> float32)."""
  from xmae_jax.data import dataset_reader

  out = {}
  for split in splits:
    for _, rec in dataset_reader.iter_records(str(dataset), split, modalities=("ppg",)):
      out[rec.segment_id] = {m: rec.signal(m) for m in ("ppg", "ecg") if rec.signal(m) is not None}
  return out


def paired_windows(n=6, seed=0):
  """(ppg, ecg) prepared windows (n, 1000): pulse-like PPG and spiky ECG at one heart rate."""
  from xmae_jax.data import preprocess

  rng = np.random.default_rng(seed)
  t = np.arange(1000) / 100.0
  f = rng.uniform(0.8, 2.0, (n, 1))
  phase = rng.uniform(0, 6, (n, 1))
  ppg = np.sin(2 * np.pi * f * t + phase) ** 3 + 0.05 * rng.normal(size=(n, 1000))
  ecg = np.cos(2 * np.pi * f * t + phase) ** 31 + 0.05 * rng.normal(size=(n, 1000))
  return (preprocess.minmax(ppg).astype(np.float32), preprocess.minmax(ecg).astype(np.float32))


def record_rows(physionet_dir: Path, channel: str, seconds: int = 30) -> tuple[np.ndarray, float]:
  """(N, 10 s) rows of one channel of the real record a103l (250 Hz), and its rate."""
  import wfdb

  rec = wfdb.rdrecord(str(physionet_dir / "a103l"), channel_names=[channel])
  fs = float(rec.fs)
  x = rec.p_signal[: int(seconds * fs), 0]
  return x.reshape(-1, int(10 * fs)), fs
