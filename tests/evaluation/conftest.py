"""Shared fixtures of the evaluation tests: one tiny xMAE and one tiny M2AE, their workdirs and
their exported packages (M2AE's: the joint ppg+ecg fingerprint package)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_config(name: str, arg: str = "tiny"):
  from xmae_jax import config_lib
  return config_lib.load(f"{REPO / 'configs' / name}.py:{arg}")


def tiny_model(name: str, seed: int, stats_seed: int):
  """(model in eval mode, config) of `configs/NAME.py:tiny`, initialized with `seed`, whose
  BatchNorm statistics differ from their init (drawn with `stats_seed`), so a lost statistic
  changes the output."""
  import jax
  import numpy as np
  from flax import nnx
  from xmae_jax import models
  config = load_config(name)
  model = models.build(config, nnx.Rngs(seed))
  state = nnx.state(model, nnx.BatchStat)
  rng = np.random.default_rng(stats_seed)
  state = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype), state)
  nnx.update(model, state)
  model.eval()
  return model, config


def paired_windows(n=6, seed=0):
  """(ppg, ecg) prepared windows (n, 1000): pulse-like PPG and spiky ECG at one heart rate."""
  import numpy as np
  from xmae_jax.data import preprocess
  rng = np.random.default_rng(seed)
  t = np.arange(1000) / 100.0
  f = rng.uniform(0.8, 2.0, (n, 1))
  phase = rng.uniform(0, 6, (n, 1))
  ppg = np.sin(2 * np.pi * f * t + phase) ** 3 + 0.05 * rng.normal(size=(n, 1000))
  ecg = np.cos(2 * np.pi * f * t + phase) ** 31 + 0.05 * rng.normal(size=(n, 1000))
  return (preprocess.minmax(ppg).astype(np.float32), preprocess.minmax(ecg).astype(np.float32))


def write_workdir(tmp_path_factory, model_config, step: int):
  """A training workdir holding `model_config`'s model as the checkpoint of `step`."""
  from xmae_jax.training import model_checkpoint
  workdir = tmp_path_factory.mktemp("workdir")
  model_checkpoint.write_model_checkpoint(workdir, *model_config, step=step)
  return workdir


def write_dataset(out, splits):
  """A prepared dataset directory at `out` of {split: [Record, ...]} (100 Hz, 10-s windows)."""
  from xmae_jax.data import shards
  entries = {name: shards.write_split(out, name, recs) for name, recs in splits.items()}
  shards.write_manifest(out, entries, sampling_rate=100, segment_length=1000, preprocessing={},
                        sources=["test"])
  return out


def stored_windows(dataset, splits=("train", "test")):
  """{segment id: {modality: window}} of every record with PPG, as stored (float16 -> float32)."""
  from xmae_jax.data import reader
  out = {}
  for split in splits:
    for _, rec in reader.iter_records(str(dataset), split, modalities=("ppg",)):
      out[rec.segment_id] = {m: rec.signal(m) for m in ("ppg", "ecg") if rec.signal(m) is not None}
  return out


@pytest.fixture(scope="session")
def tiny_xmae():
  """(model in eval mode, config): a tiny xMAE with non-trivial BatchNorm statistics."""
  return tiny_model("xmae", seed=3, stats_seed=0)


@pytest.fixture(scope="session")
def tiny_workdir(tiny_xmae, tmp_path_factory):
  return write_workdir(tmp_path_factory, tiny_xmae, step=7)


@pytest.fixture(scope="session")
def tiny_package(tiny_workdir, tmp_path_factory):
  from xmae_jax.evaluation import export
  return export.export_workdir(tiny_workdir, tmp_path_factory.mktemp("pkg") / "encoder")


@pytest.fixture(scope="session")
def tiny_m2ae():
  """(model in eval mode, config): a tiny M2AE with non-trivial BatchNorm statistics."""
  return tiny_model("m2ae", seed=5, stats_seed=1)


@pytest.fixture(scope="session")
def m2ae_workdir(tiny_m2ae, tmp_path_factory):
  return write_workdir(tmp_path_factory, tiny_m2ae, step=3)


@pytest.fixture(scope="session")
def joint_package(m2ae_workdir, tmp_path_factory):
  """The tiny M2AE's ppg+ecg fingerprint package, written by `xmae-export --modality ppg+ecg`."""
  from xmae_jax.cli import xmae_export
  out = tmp_path_factory.mktemp("joint") / "fingerprint"
  assert xmae_export.main(["--workdir", str(m2ae_workdir), "--output", str(out),
                           "--modality", "ppg+ecg"]) == 0
  return out
