"""Shared fixtures of the evaluation tests: one tiny xMAE and one tiny M2AE, their workdirs and
their exported packages (M2AE's: the joint ppg+ecg fingerprint package)."""

import pytest

from tests.helpers.tiny_models import tiny_model
from tests.helpers.tiny_models import write_workdir


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
  assert (
      xmae_export.main(
          ["--workdir", str(m2ae_workdir), "--output", str(out), "--modality", "ppg+ecg"]
      )
      == 0
  )
  return out
