"""Shared fixtures of the evaluation tests: one tiny xMAE, its workdir and its exported package."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_config(name: str, arg: str = "tiny"):
  from xmae_jax import config_lib
  return config_lib.load(f"{REPO / 'configs' / name}.py:{arg}")


@pytest.fixture(scope="session")
def tiny_xmae():
  """(model in eval mode, config): a tiny xMAE with non-trivial BatchNorm statistics."""
  import jax
  import numpy as np
  from flax import nnx
  from xmae_jax import models
  config = load_config("xmae")
  model = models.build(config, nnx.Rngs(3))
  # Make BatchNorm statistics differ from their init, so a lost statistic changes the output.
  state = nnx.state(model, nnx.BatchStat)
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype), state)
  nnx.update(model, state)
  model.eval()
  return model, config


@pytest.fixture(scope="session")
def tiny_workdir(tiny_xmae, tmp_path_factory):
  from xmae_jax.training import checkpoint
  model, config = tiny_xmae
  workdir = tmp_path_factory.mktemp("workdir")
  checkpoint.write_model_checkpoint(workdir, model, config, step=7)
  return workdir


@pytest.fixture(scope="session")
def tiny_package(tiny_workdir, tmp_path_factory):
  from xmae_jax.evaluation import export
  return export.export_workdir(tiny_workdir, tmp_path_factory.mktemp("pkg") / "encoder")
