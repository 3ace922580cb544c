"""Tiny exported packages and real-record rows for the interop tests (torch, StableHLO, ONNX)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def tiny_package(out: Path, name: str, modality: str, seed: int) -> Path:
  """The package of `configs/NAME.py:tiny` initialized with `seed`, its BatchNorm statistics
  moved off their init (so a statistic lost or misread changes the embedding)."""
  import jax
  from flax import nnx
  from xmae_jax import config_lib, models
  from xmae_jax.evaluation import export
  config = config_lib.load(f"{REPO / 'configs' / name}.py:tiny")
  model = models.build(config, nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.BatchStat)
  nnx.update(model, jax.tree.map(
      lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype), state))
  model.eval()
  return export.export_model(model, config, out, modality=modality)


def record_rows(physionet_dir: Path, channel: str, seconds: int = 30) -> tuple[np.ndarray, float]:
  """(N, 10 s) rows of one channel of the real record a103l (250 Hz), and its rate."""
  import wfdb
  rec = wfdb.rdrecord(str(physionet_dir / "a103l"), channel_names=[channel])
  fs = float(rec.fs)
  x = rec.p_signal[:int(seconds * fs), 0]
  return x.reshape(-1, int(10 * fs)), fs


def run_python(args, **kwargs) -> subprocess.CompletedProcess:
  """A fresh Python process on this checkout's code (CPU only)."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, **kwargs)
