"""Export -> load -> embed equals the in-training encoder; package contents; clear errors."""

import json
import shutil

import numpy as np
import pytest

from xmae_jax.data import preprocess
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import export as export_lib
from xmae_jax.evaluation import package as package_lib
from xmae_jax.evaluation import package_swap


def _segments(n=6, length=1000, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(length) / 100.0
  x = np.sin(2 * np.pi * rng.uniform(0.8, 2.0, (n, 1)) * t) + 0.1 * rng.normal(size=(n, length))
  return preprocess.minmax(x).astype(np.float32)


def test_export_load_embed_equals_training_encoder(tiny_xmae, tiny_package):
  import xmae_jax

  model, _ = tiny_xmae
  x = _segments()
  expected = np.asarray(model.encoder("ppg")(x))
  enc = xmae_jax.load_encoder(tiny_package)
  z = enc.embed(x, fs=100)
  assert z.dtype == np.float32 and z.shape == (len(x), enc.latent_dim)
  np.testing.assert_allclose(z, expected, atol=1e-5, rtol=1e-5)
  # Batching (several jitted batches, the last padded) does not change a row.
  enc_small = xmae_jax.load_encoder(tiny_package, batch_size=4)
  np.testing.assert_allclose(enc_small.embed(x), expected, atol=1e-5, rtol=1e-5)


def test_package_contents(tiny_xmae, tiny_package):
  from safetensors.numpy import load_file

  model, config = tiny_xmae
  info = json.loads((tiny_package / "package.json").read_text())
  assert info["format_version"] == package_lib.FORMAT_VERSION
  assert info["modality"] == "ppg" and info["source"]["step"] == 7
  assert info["contract"]["sampling_rate"] == 100 and info["contract"]["segment_length"] == 1000
  assert info["param_count"] == encoder_module.count_parameters(model.encoder("ppg"))
  tensors = load_file(str(tiny_package / "encoder.safetensors"))
  assert set(tensors) == set(info["tensors"])
  assert any(t["kind"] == "batch_stat" for t in info["tensors"].values())
  for name, t in info["tensors"].items():
    assert list(tensors[name].shape) == t["shape"], name
    assert f"`{name}`" in (tiny_package / "README.md").read_text()
  n_params = sum(np.prod(t["shape"]) for t in info["tensors"].values() if t["kind"] == "param")
  assert n_params == info["param_count"]


def test_raw_input_is_resampled_and_windowed(tiny_package):
  enc = encoder_lib.load_encoder(tiny_package)
  x = _segments(n=2, length=1000)
  # The same 10 s at 200 Hz (linear upsampling) embeds close to the 100-Hz version, and a row of
  # two 10-s windows gives one embedding: the mean of its windows'.
  up = np.stack([np.interp(np.arange(2000) / 2.0, np.arange(1000), row) for row in x])
  z_up = enc.embed(up, fs=200, clean=False)
  z = enc.embed(x, clean=False)
  assert z_up.shape == z.shape
  assert np.max(np.abs(z_up - z)) < 0.1 * np.max(np.abs(z))
  two = np.concatenate([x[:1], x[1:]], axis=1)
  np.testing.assert_allclose(enc.embed(two, fs=100, clean=False)[0], z.mean(0), atol=1e-5)


def test_embed_bad_inputs(tiny_package):
  enc = encoder_lib.load_encoder(tiny_package)
  x = _segments(n=2)
  bad = x.copy()
  bad[1, 10] = np.nan
  with pytest.raises(encoder_lib.EncoderInputError, match="NaN"):
    enc.embed(bad)
  with pytest.raises(encoder_lib.EncoderInputError, match="shorter than one"):
    enc.embed(x[:, :500])
  with pytest.raises(encoder_lib.EncoderInputError, match=r"\(N, L\)"):
    enc.embed(x[None])  # (1-D is one recording: test_own_data.py)
  with pytest.raises(encoder_lib.EncoderInputError, match="sampling rate"):
    enc.embed(x, fs=0)


def test_incompatible_or_broken_package(tiny_package, tmp_path):
  other = tmp_path / "other"
  shutil.copytree(tiny_package, other)
  info = json.loads((other / "package.json").read_text())
  info["format_version"] = 99
  info["package_version"] = "9.0.0"
  (other / "package.json").write_text(json.dumps(info))
  with pytest.raises(package_lib.PackageError, match="format version 99.*9.0.0.*re-export"):
    encoder_lib.load_encoder(other)
  with pytest.raises(package_lib.PackageError, match="does not exist"):
    encoder_lib.load_encoder(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(package_lib.PackageError, match="not an encoder package"):
    encoder_lib.load_encoder(tmp_path / "empty")
  shutil.rmtree(other / "encoder")
  info["format_version"] = package_lib.FORMAT_VERSION
  (other / "package.json").write_text(json.dumps(info))
  with pytest.raises(package_lib.PackageError, match="encoder.* is missing"):
    encoder_lib.load_encoder(other)


def test_export_cli_errors(tiny_workdir, tiny_package, tmp_path, capsys):
  from xmae_jax.cli import xmae_export as export

  assert export.main(["--workdir", str(tiny_workdir), "--output", str(tiny_package)]) == 1
  assert "exists" in capsys.readouterr().err
  assert export.main(["--workdir", str(tmp_path / "none"), "--output", str(tmp_path / "p")]) == 1
  assert "checkpoints" in capsys.readouterr().err
  assert (
      export.main(
          ["--workdir", str(tiny_workdir), "--output", str(tmp_path / "p"), "--step", "best"]
      )
      == 1
  )
  assert "validation loss" in capsys.readouterr().err
  assert not (tmp_path / "p").exists()


def test_export_of_imported_reference_weights_matches_reference(tmp_path):
  """Reference PyTorch weights (the golden fixture) -> importer -> workdir -> export -> embed
  reproduces the reference's own ppg_embedding."""
  from tests.helpers import golden
  from xmae_jax.interop import reference
  from xmae_jax.training import model_checkpoint

  z = np.load(golden.FIXTURES / "xmae_small_bridge.npz")
  config = golden.config_for(json.loads(str(z["meta/config_json"])))
  model = reference.from_reference_state_dict(golden.unpack(z, "sd"), config)
  # as xmae-import-torch does
  model_checkpoint.write_model_checkpoint(tmp_path / "imported", model, config, step=0)
  package = export_lib.export_workdir(tmp_path / "imported", tmp_path / "pkg")
  info = json.loads((package / "package.json").read_text())
  assert info["source"]["step"] == 0 and info["source"]["checkpoint_kind"] == "model"
  z_ours = encoder_lib.load_encoder(package).embed(z["in/ppg"], fs=100)
  np.testing.assert_allclose(z_ours, z["out/ppg_embedding"], atol=1e-5, rtol=1e-4)


def test_export_killed_mid_write_leaves_nothing_behind_after_the_next_export(
    tiny_workdir, tmp_path
):
  """A scratch folder of a killed export (its pid gone) is removed by the next export to that
  path; one of a live export is left alone, and so are folders the tool did not make."""
  import os
  import socket
  import subprocess
  import sys

  out = tmp_path / "encoder"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # a pid that no longer runs

  def scratch(suffix, pid):
    folder = tmp_path / f".encoder.xmae-export-{suffix}"
    (folder / "new" / "weights").mkdir(parents=True)
    (folder / package_swap.SCRATCH_MARKER).write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "output": "encoder"})
    )
    return folder

  stale, live = scratch("abc", dead.pid), scratch("xyz", os.getpid())
  users = [
      tmp_path / "encoder.old",
      tmp_path / f"encoder.tmp-{dead.pid}-abc",
      tmp_path / ".encoder.xmae-export-mine",
  ]  # the last one without a marker
  for folder in users:
    (folder / "notes").mkdir(parents=True)
  export_lib.export_workdir(tiny_workdir, out)
  assert not stale.exists() and live.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["encoder", live.name, *(f.name for f in users)]
  )
  assert all((f / "notes").is_dir() for f in users)
  assert (out / package_lib.PACKAGE_FILE).is_file()
