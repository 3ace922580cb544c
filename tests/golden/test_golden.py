"""Parity with the reference PyTorch xMAE on golden files (see make_reference_golden.py).

The committed fixtures (tests/golden/fixtures/*.npz, small preset, bridge and no-bridge) are
imported with `from_reference_state_dict` and must reproduce the reference's eval-mode
reconstruction and embedding within float32 rounding, and its train-mode BatchNorm updates.
Set XMAE_GOLDEN_DIR to also check golden files made elsewhere (e.g. the paper preset).
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import golden as golden_lib
from xmae_jax.interop import reference

HERE = Path(__file__).resolve().parent


def _golden_files():
  files = sorted((HERE / "fixtures").glob("xmae_*.npz"))
  extra = os.environ.get("XMAE_GOLDEN_DIR")
  if extra:
    files += sorted(Path(extra).glob("xmae_*.npz"))
  return files


def _close(ours, theirs, tol=1e-5):
  """Max abs difference, asserted within float32 rounding relative to the output's scale."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  diff = float(np.max(np.abs(ours - theirs)))
  scale = float(np.max(np.abs(theirs)))
  assert diff <= tol * max(scale, 1.0), f"max abs diff {diff:.3g} at scale {scale:.3g}"
  return diff


@jax.jit
def _forward(model, ppg, ecg, keep):
  """The model's forward, compiled; returns the model too so BatchNorm updates come back."""
  return model(ppg, ecg, keep), model


@pytest.fixture(params=_golden_files(), ids=lambda p: p.name, scope="module")
def golden(request):
  z = np.load(request.param)
  meta = json.loads(str(z["meta/config_json"]))
  return z, meta


def test_fixtures_exist():
  assert any(p.parent.name == "fixtures" for p in _golden_files())


def test_eval_outputs_match_reference(golden):
  z, meta = golden
  config = golden_lib.config_for(meta)
  model = reference.from_reference_state_dict(golden_lib.unpack(z, "sd"), config)
  out, _ = _forward(model, z["in/ppg"], z["in/ecg"], z["in/ids_keep_ecg"])
  rec_diff = _close(out["ecg_reconstruction"], z["out/ecg_reconstructed"])
  emb_diff = _close(out["ppg_embedding"], z["out/ppg_embedding"])
  np.testing.assert_array_equal(np.asarray(out["ecg_mask"]), z["out/seq_mask_used_ecg"])
  print(
      f"{meta['preset']}/{meta['variant']}: reconstruction max abs diff {rec_diff:.3g}, "
      f"embedding {emb_diff:.3g}"
  )


def test_restore_ids_match_reference(golden):
  z, meta = golden
  from xmae_jax.models import masking

  n = meta["seq_len"] // meta["patch_len"]
  np.testing.assert_array_equal(
      np.asarray(masking.restore_ids(jnp.asarray(z["in/ids_keep_ecg"]), n)), z["in/ids_restore_ecg"]
  )


def test_train_mode_matches_reference(golden):
  """One train-mode forward (dropout 0): batch statistics in the output, and the running
  statistics updated as torch does (momentum 0.1, unbiased running variance)."""
  z, meta = golden
  if "train_out/ecg_reconstructed" not in z.files:
    pytest.skip("this golden file has no train-mode outputs")
  config = golden_lib.config_for(meta)
  model = reference.from_reference_state_dict(golden_lib.unpack(z, "sd"), config)
  model.train()
  out, model = _forward(model, z["in/ppg"], z["in/ecg"], z["in/ids_keep_ecg"])
  _close(out["ecg_reconstruction"], z["train_out/ecg_reconstructed"])
  _close(out["ppg_embedding"], z["train_out/ppg_embedding"])
  after = reference.to_reference_state_dict(model)
  expected = golden_lib.unpack(z, "train_sd")
  before = golden_lib.unpack(z, "sd")
  changed = 0
  for name, value in expected.items():
    _close(after[name], value)
    changed += not np.allclose(before[name], value)
  assert changed > len(expected) // 2  # the forward really moved the statistics
