"""Test-wide settings: CPU only, the shared PhysioNet records, small temp datasets."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHYSIONET = SHARED / "data" / "physionet"


@pytest.fixture(scope="session")
def physionet_dir():
  if not PHYSIONET.is_dir():
    pytest.skip(f"{PHYSIONET} not present (../shared beside the checkout)")
  return PHYSIONET


@pytest.fixture(autouse=True, scope="session")
def _absl_flags_parsed():
  # Grain's multiprocessing reads absl flags; outside app.run they must be marked parsed.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
