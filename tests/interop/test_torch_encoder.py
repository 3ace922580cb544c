"""The pure-PyTorch encoder of an exported package (xmae_jax.interop.torch_encoder): no JAX in
its import chain (the example script, run in a fresh process, reports it), the same
embeddings as `load_encoder(...).embed` on a real record, and the PyTorch example script."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.helpers import datasets  # noqa: E402
from tests.helpers import mp_util  # noqa: E402
from tests.helpers import tiny_models  # noqa: E402
import xmae_jax  # noqa: E402
from xmae_jax.interop import torch_encoder  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def xmae_package(tmp_path_factory):
  out = tmp_path_factory.mktemp("torch")
  return tiny_models.tiny_package(out / "xmae", "xmae", "ppg", seed=3)


@pytest.fixture(scope="module")
def joint_package(tmp_path_factory):
  out = tmp_path_factory.mktemp("torch")
  return tiny_models.tiny_package(out / "m2ae", "m2ae", "ppg+ecg", seed=5)


def test_xmae_ppg_matches_jax_on_a_real_record(xmae_package, physionet_dir):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")        # three 10-s rows at 250 Hz
  jax_enc = xmae_jax.load_encoder(xmae_package)
  enc = torch_encoder.load(xmae_package)
  want = np.asarray(jax_enc.embed(ppg, fs=fs))
  got = enc.embed(ppg, fs=fs)                         # cleaned, resampled, normalized as JAX does
  assert got.shape == want.shape == (3, 32) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  assert np.abs(want[0] - want[1]).max() > 1e-3       # the rows differ: a real comparison
  windows, _ = enc.prepare(ppg, fs)                   # the torch module on prepared windows
  with torch.no_grad():
    direct = enc.module(torch.from_numpy(windows)).numpy()
  np.testing.assert_allclose(direct, jax_enc.embed_prepared(windows), atol=TOL, rtol=0)


def test_m2ae_joint_matches_jax_for_each_modality_and_both(joint_package, physionet_dir):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH", seconds=20)
  ecg, _ = datasets.record_rows(physionet_dir, "II", seconds=20)   # the same two 10-s windows
  jax_enc = xmae_jax.load_encoder(joint_package)
  enc = torch_encoder.load(joint_package)
  assert enc.modalities == ("ppg", "ecg")
  for given in ({"ppg": ppg}, {"ecg": ecg}, {"ppg": ppg, "ecg": ecg}):
    want = np.asarray(jax_enc.embed(fs=fs, **given))
    np.testing.assert_allclose(enc.embed(fs=fs, **given), want, atol=TOL, rtol=0,
                               err_msg=str(list(given)))
  with pytest.raises(torch_encoder.TorchEncoderError, match="keyword"):
    enc.embed(ppg, fs=fs)


def test_a_long_row_is_one_averaged_embedding_like_load_encoder(xmae_package, physionet_dir):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  enc = torch_encoder.load(xmae_package)
  row = ppg.reshape(1, -1)                            # one 30-s row = three windows
  windows, source = enc.prepare(row, fs)
  assert windows.shape == (3, 1000) and list(source) == [0, 0, 0]
  np.testing.assert_allclose(enc.embed(row, fs=fs)[0], enc.embed_prepared(windows).mean(axis=0),
                             atol=1e-6)


def test_not_a_package_or_a_mismatched_one_is_one_line(xmae_package, tmp_path):
  from xmae_jax.evaluation import package as package_lib
  with pytest.raises(package_lib.PackageError, match="does not exist"):
    torch_encoder.load(tmp_path / "nothing")
  from safetensors.numpy import load_file, save_file
  bad = tmp_path / "bad"
  bad.mkdir()
  for f in ("package.json", "config.json"):
    (bad / f).write_text((xmae_package / f).read_text())
  tensors = load_file(str(xmae_package / "encoder.safetensors"))
  del tensors["stem.skip_bn.var"]
  save_file(tensors, str(bad / "encoder.safetensors"))
  with pytest.raises(torch_encoder.TorchEncoderError, match="1 absent") as e:
    torch_encoder.load(bad)
  assert "\n" not in str(e.value)


def test_torch_example_embeds_a_real_record_without_jax(xmae_package, physionet_dir, tmp_path):
  out = tmp_path / "z.npy"
  done = mp_util.run_python(["examples/embed_with_torch.py", str(xmae_package),
                     str(physionet_dir / "a103l"), "--output", str(out)])
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["jax_modules"] == [] and report["embeddings"] == [3, 32]   # no JAX imported
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  np.testing.assert_allclose(np.load(out), xmae_jax.load_encoder(xmae_package).embed(ppg, fs=fs),
                             atol=TOL, rtol=0)
