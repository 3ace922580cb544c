"""Every exported package carries MODEL_CARD.md: training data and its licence, preprocessing,
the run's validation loss with its commands, limits."""

import json

import pytest

from xmae_jax import config_lib
from xmae_jax.data import shards
from xmae_jax.evaluation import model_card

SPLITS = {
    "train": {"records": 40, "subjects": 8, "shards": []},
    "validation": {"records": 5, "subjects": 1, "shards": []},
    "test": {"records": 5, "subjects": 1, "shards": []},
}


def _dataset(path, *, source="wfdb", licence=None):
  """A dataset directory's manifest and prepare report (the card reads only these)."""
  path.mkdir(parents=True, exist_ok=True)
  shards.write_manifest(
      path,
      SPLITS,
      sampling_rate=100,
      segment_length=1000,
      preprocessing={"target_fs": 100},
      sources=[source],
      extra={"source": source},
  )
  report = {
      "source": source,
      "input": "/data/challenge2015",
      "files_read": 556,
      "files_total": 556,
      "segments_kept": 50,
      "segments_dropped_total": 3,
  }
  if licence:
    report["license"] = licence
  (path / "report.json").write_text(json.dumps(report))
  return path


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  """A package written by the package writer (what xmae-export calls) for a tiny xMAE config
  whose data.dir is a dataset with a licence; two small tensors stand in for the weights
  (building the model costs seconds and the card reads none of it)."""
  import numpy as np

  from xmae_jax.evaluation import encoder as encoder_lib
  from xmae_jax.evaluation import package as package_lib

  data = _dataset(
      tmp_path_factory.mktemp("data") / "c15", licence="Open Data Commons Attribution License v1.0"
  )
  config = config_lib.load("xmae:tiny", {"data.dir": str(data)})
  tensors = {"embed.kernel": np.ones((4, 2), np.float32), "bn.mean": np.zeros(2, np.float32)}
  contract = encoder_lib.Contract.from_config(config)
  info = package_lib.package_info(
      model_name="xmae",
      modality="ppg",
      latent_dim=32,
      param_count=47876,
      contract=contract.as_dict(),
      preprocessing={"target_fs": 100},
      source={
          "workdir": "/runs/c15",
          "step": 1200,
          "requested_step": "auto",
          "val_loss": 0.01234,
          "checkpoint_kind": "train",
      },
      tensors=tensors,
      kinds={"embed.kernel": "param", "bn.mean": "batch_stat"},
      segment_length=contract.segment_length,
  )
  return package_lib.write_package(
      tmp_path_factory.mktemp("pkg") / "enc", tensors, info, config_lib.config_to_dict(config)
  )


def test_the_exported_package_has_the_card(tiny_export):
  card = (tiny_export / model_card.FILE).read_text()
  info = json.loads((tiny_export / "package.json").read_text())
  assert card.startswith("# Model card: xmae ppg encoder")
  assert f"{info['param_count']:,} parameters" in card
  assert "Licence of the data: Open Data Commons Attribution License v1.0." in card
  assert "Source: wfdb; input `/data/challenge2015`" in card
  assert "train 40 / 8" in card and "556/556 inputs read, 50 windows kept, 3 dropped" in card
  assert "0.01234 at step 1200 (the lowest of the run" in card
  assert "xmae-export --workdir /runs/c15 --step auto" in card
  assert "`sampling_rate`: 100" in card and "`segment_length`: 1000" in card
  assert "not a medical device" in card


def test_unknown_facts_are_written_as_unknown(tmp_path):
  info = {
      "model_name": "M2AE",
      "modality": "ppg+ecg",
      "modalities": ["ppg", "ecg"],
      "param_count": 10,
      "latent_dim": 8,
      "package_version": "0.1.0",
      "source": {"random_init": "m2ae:tiny"},
      "contract": {},
  }
  card = model_card.render(info, {"data": {"dir": str(tmp_path / "gone")}})
  assert "Licence of the data: unknown." in card
  assert "(its manifest was not readable at export)" in card
  assert "Validation loss (the pretraining objective on the dataset's val split): unknown" in card
  assert "and the shared bottleneck" in card
  # a dataset without a stated licence: unknown, unless it is the simulator's
  assert model_card.data_licence(model_card.dataset_facts(str(_dataset(tmp_path / "w")))) == (
      "unknown"
  )
  simulated = _dataset(tmp_path / "s", source="synthetic")
  assert model_card.data_licence(model_card.dataset_facts(str(simulated))) == (
      model_card.SIMULATED_LICENCE
  )
