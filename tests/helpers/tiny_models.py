"""Tiny models of the real configs, with BatchNorm statistics moved off their init (so a lost or
misread statistic changes the output), as models, workdirs and exported packages."""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def load_config(name: str, arg: str = "tiny"):
  """`configs/NAME.py:ARG` of this checkout."""
  from xmae_jax import config_lib

  return config_lib.load(f"{REPO / 'configs' / name}.py:{arg}")


def tiny_model(name: str, seed: int, stats_seed: int):
  """(model in eval mode, config) of `configs/NAME.py:tiny`, initialized with `seed`, whose
  BatchNorm statistics differ from their init (drawn with `stats_seed`), so a lost statistic
  changes the output."""
  import jax
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


def write_workdir(tmp_path_factory, model_config, step: int):
  """A training workdir holding `model_config`'s model as the checkpoint of `step`."""
  from xmae_jax.training import model_checkpoint

  workdir = tmp_path_factory.mktemp("workdir")
  model_checkpoint.write_model_checkpoint(workdir, *model_config, step=step)
  return workdir


def tiny_package(out: Path, name: str, modality: str, seed: int) -> Path:
  """The package of `configs/NAME.py:tiny` initialized with `seed`, its BatchNorm statistics
  moved off their init (so a statistic lost or misread changes the embedding)."""
  import jax
  from flax import nnx

  from xmae_jax import config_lib
  from xmae_jax import models
  from xmae_jax.evaluation import export

  config = config_lib.load(f"{REPO / 'configs' / name}.py:tiny")
  model = models.build(config, nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.BatchStat)
  nnx.update(
      model, jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype), state)
  )
  model.eval()
  return export.export_model(model, config, out, modality=modality)
