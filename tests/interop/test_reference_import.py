"""Importing the reference's PyTorch state dict (xmae_jax.interop.reference) and the CLI."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xmae_jax.interop import reference
from xmae_jax.models.xmae import XMAE

REPO = Path(__file__).resolve().parents[2]
KEEP = jnp.array([[2, 3, 4, 5, 6], [15, 16, 17, 18, 19]])


def get_config(arg="tiny"):
  spec = importlib.util.spec_from_file_location("_cfg_xmae_interop", REPO / "configs" / "xmae.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@jax.jit
def forward(model, ppg, ecg, keep):
  return model(ppg, ecg, keep)


def inputs():
  r = np.random.default_rng(0)
  return (
      jnp.asarray(r.uniform(-1, 1, (2, 1000)), jnp.float32),
      jnp.asarray(r.uniform(-1, 1, (2, 1000)), jnp.float32),
  )


@pytest.fixture(scope="module")
def source():
  """A tiny model with non-default BatchNorm statistics, and its reference-named state dict."""
  model = XMAE(get_config(), rngs=nnx.Rngs(7))
  r = np.random.default_rng(1)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    shift = r.uniform(0.5, 2.0, var.shape) if path[-1] == "var" else r.normal(0, 0.2, var.shape)
    var[...] = jnp.asarray(shift, jnp.float32)
  model.eval()
  return model, reference.to_reference_state_dict(model)


def test_state_dict_has_reference_names(source):
  _, sd = source
  for name in (
      "ppg_path.stem.enc1.0.branches.2.0.weight",
      "ppg_path.stem.skip_bn.running_var",
      "ecg_path.encoder.blocks.0.attn.in_proj_weight",
      "ppg_path.proj.1.weight",
      "ecg_path.decoder.deconv.weight",
      "ecg_path.mask_loc_table.weight",
      "bridger.ecg2ppg.0.ffn.3.bias",
      "bridger.ppg2ecg.0.nkv.weight",
      "mask_token",
      "ppg_path.stem.enc1.0.branches.0.1.num_batches_tracked",
  ):
    assert name in sd, name
  assert sd["ecg_path.encoder.blocks.0.attn.in_proj_weight"].shape == (96, 32)  # (3D, D)
  assert sd["ppg_path.stem.enc1.0.branches.2.0.weight"].shape == (4, 1, 7)  # (out, in, k)
  assert sd["ecg_path.decoder.deconv.weight"].shape == (32, 1, 40)


def test_round_trip_reproduces_the_model(source):
  model, sd = source
  again = reference.from_reference_state_dict(sd, get_config())
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(again))
  ppg, ecg = inputs()
  a, b = forward(model, ppg, ecg, KEEP), forward(again, ppg, ecg, KEEP)
  np.testing.assert_array_equal(a["ecg_reconstruction"], b["ecg_reconstruction"])
  assert again.ppg_path.encoder.stem.skip_bn.use_running_average  # eval mode


def test_torch_tensors_and_lightning_checkpoint_file(source, tmp_path):
  torch = pytest.importorskip("torch")
  model, sd = source
  tensors = {f"model.{k}": torch.from_numpy(np.array(v)) for k, v in sd.items()}
  path = tmp_path / "last.ckpt.pth"
  torch.save({"state_dict": tensors, "epoch": 3}, path)
  loaded = reference.from_reference_state_dict(str(path), get_config())
  jax.tree.map(
      np.testing.assert_array_equal, nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
  )
  with pytest.raises(reference.ReferenceStateDictError, match="no such checkpoint"):
    reference.from_reference_state_dict(str(tmp_path / "missing.pth"), get_config())


def test_broken_state_dict_gives_one_error_listing_every_problem(source):
  _, sd = source
  broken = dict(sd)
  del broken["ecg_path.pos"]
  del broken["bridger.ecg2ppg.0.attn.in_proj_bias"]
  broken["ppg_path.extra_head.weight"] = np.zeros(3, np.float32)
  broken["ppg_path.proj.1.weight"] = np.zeros((5, 32), np.float32)
  with pytest.raises(reference.ReferenceStateDictError) as e:
    reference.from_reference_state_dict(broken, get_config())
  msg = str(e.value)
  for part in (
      "missing (2)",
      "ecg_path.pos",
      "bridger.ecg2ppg.0.attn.in_proj_bias",
      "unexpected (1): ppg_path.extra_head.weight",
      "mis-shaped (1)",
      "ppg_path.proj.1.weight (5, 32) (expected (32, 32))",
  ):
    assert part in msg, (part, msg)


def test_lean_model_ignores_the_reference_unused_modules(source):
  model, sd = source
  lean = get_config()
  lean.model.build_unused = False
  imported = reference.from_reference_state_dict(sd, lean)
  assert imported.bridge_unused is None and imported.mask_token is None
  ppg, ecg = inputs()
  np.testing.assert_allclose(
      forward(imported, ppg, ecg, KEEP)["ecg_reconstruction"],
      forward(model, ppg, ecg, KEEP)["ecg_reconstruction"],
      atol=1e-6,
  )


def test_import_torch_cli_writes_a_loadable_checkpoint(source, tmp_path):
  torch = pytest.importorskip("torch")
  from xmae_jax.cli import xmae_import_torch as import_torch
  from xmae_jax.training import model_checkpoint

  model, sd = source
  pth = tmp_path / "ref.pth"
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, pth)
  out = tmp_path / "imported"
  reference.import_checkpoint(str(pth), str(REPO / "configs" / "xmae.py") + ":tiny", str(out))
  loaded, config = model_checkpoint.load_model(out)
  assert config.model.d_model == 32
  ppg, ecg = inputs()
  np.testing.assert_array_equal(
      forward(loaded, ppg, ecg, KEEP)["ecg_reconstruction"],
      forward(model, ppg, ecg, KEEP)["ecg_reconstruction"],
  )
  assert (
      import_torch.main(
          [
              "--checkpoint",
              str(tmp_path / "nope.pth"),
              "--config",
              str(REPO / "configs" / "xmae.py") + ":tiny",
              "--workdir",
              str(tmp_path / "x"),
          ]
      )
      != 0
  )
