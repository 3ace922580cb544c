"""The pure-PyTorch encoder of an exported package (xmae_jax.interop.torch_encoder): no JAX in
its import chain (the example script, run in a fresh process, reports it), the same
embeddings as `load_encoder(...).embed` on a real record, and the PyTorch example script."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xmae_jax  # noqa: E402
from tests.helpers import datasets  # noqa: E402
from tests.helpers import mp_util  # noqa: E402
from tests.helpers import tiny_models  # noqa: E402
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
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")  # three 10-s rows at 250 Hz
  jax_enc = xmae_jax.load_encoder(xmae_package)
  enc = torch_encoder.load(xmae_package)
  want = np.asarray(jax_enc.embed(ppg, fs=fs))
  got = enc.embed(ppg, fs=fs)  # cleaned, resampled, normalized as JAX does
  assert got.shape == want.shape == (3, 32) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  assert np.abs(want[0] - want[1]).max() > 1e-3  # the rows differ: a real comparison
  windows, _ = enc.prepare(ppg, fs)  # the torch module on prepared windows
  with torch.no_grad():
    direct = enc.module(torch.from_numpy(windows)).numpy()
  np.testing.assert_allclose(direct, jax_enc.embed_prepared(windows), atol=TOL, rtol=0)


def test_m2ae_joint_matches_jax_for_each_modality_and_both(joint_package, physionet_dir):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH", seconds=20)
  ecg, _ = datasets.record_rows(physionet_dir, "II", seconds=20)  # the same two 10-s windows
  jax_enc = xmae_jax.load_encoder(joint_package)
  enc = torch_encoder.load(joint_package)
  assert enc.modalities == ("ppg", "ecg")
  for given in ({"ppg": ppg}, {"ecg": ecg}, {"ppg": ppg, "ecg": ecg}):
    want = np.asarray(jax_enc.embed(fs=fs, **given))
    np.testing.assert_allclose(
        enc.embed(fs=fs, **given), want, atol=TOL, rtol=0, err_msg=str(list(given))
    )
  with pytest.raises(torch_encoder.TorchEncoderError, match="keyword"):
    enc.embed(ppg, fs=fs)


def test_a_long_row_is_one_averaged_embedding_like_load_encoder(xmae_package, physionet_dir):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  enc = torch_encoder.load(xmae_package)
  row = ppg.reshape(1, -1)  # one 30-s row = three windows
  windows, source = enc.prepare(row, fs)
  assert windows.shape == (3, 1000) and list(source) == [0, 0, 0]
  np.testing.assert_allclose(
      enc.embed(row, fs=fs)[0], enc.embed_prepared(windows).mean(axis=0), atol=1e-6
  )


def test_not_a_package_or_a_mismatched_one_is_one_line(xmae_package, tmp_path):
  from xmae_jax.evaluation import package as package_lib

  with pytest.raises(package_lib.PackageError, match="does not exist"):
    torch_encoder.load(tmp_path / "nothing")
  from safetensors.numpy import load_file
  from safetensors.numpy import save_file

  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text((xmae_package / "config.json").read_text())
  info = json.loads((xmae_package / "package.json").read_text())
  info.pop(package_lib.DIGESTS)  # hand-made: no digests, so read unverified
  (bad / "package.json").write_text(json.dumps(info))
  tensors = load_file(str(xmae_package / "encoder.safetensors"))
  del tensors["stem.skip_bn.var"]
  save_file(tensors, str(bad / "encoder.safetensors"))
  with pytest.raises(torch_encoder.TorchEncoderError, match="1 absent") as e:
    torch_encoder.load(bad)
  assert "\n" not in str(e.value)


def test_torch_example_embeds_a_real_record_without_jax(xmae_package, physionet_dir, tmp_path):
  out = tmp_path / "z.npy"
  done = mp_util.run_python(
      [
          "examples/embed_with_torch.py",
          str(xmae_package),
          str(physionet_dir / "a103l"),
          "--output",
          str(out),
      ]
  )
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["jax_modules"] == [] and report["embeddings"] == [3, 32]  # no JAX imported
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  np.testing.assert_allclose(
      np.load(out), xmae_jax.load_encoder(xmae_package).embed(ppg, fs=fs), atol=TOL, rtol=0
  )


def test_raw_recordings_get_the_packages_ppg_alignment_as_in_jax(joint_package, physionet_dir):
  """A package trained on aligned data: both encoders move each raw row's PPG alike (measured
  on its ECG when given, else the fixed delay) and say so."""
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH", seconds=60)
  ecg, _ = datasets.record_rows(physionet_dir, "II", seconds=60)
  ppg, ecg = ppg.reshape(2, -1), ecg.reshape(2, -1)  # two 30-s recordings
  jax_enc = xmae_jax.load_encoder(joint_package)
  enc = torch_encoder.load(joint_package)
  for e in (jax_enc, enc):
    e.info["preprocessing"] = {"ppg_align_seconds": 0.1, "ppg_delay_seconds": 0.2}
  for given, note in (({"ppg": ppg, "ecg": ecg}, "per record"), ({"ppg": ppg}, "fixed: PPG")):
    want = np.asarray(jax_enc.embed(fs=fs, **given))
    got = enc.embed(fs=fs, **given)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=note)
    assert enc.last_alignment == jax_enc.last_alignment
    assert enc.last_alignment.startswith(note) and "2 " in enc.last_alignment
    as_given = enc.embed(fs=fs, align=False, **given)
    assert enc.last_alignment == "none"
    assert np.abs(as_given - got).max() > 1e-3  # the shift was applied


def test_a_damaged_or_escaping_package_is_refused_as_load_encoder_refuses_it(
    xmae_package, tmp_path
):
  import shutil

  from xmae_jax.evaluation import package as package_lib

  pkg, outside = tmp_path / "pkg", tmp_path / "outside"
  shutil.copytree(xmae_package, pkg)
  shutil.copytree(xmae_package, outside)
  weights = pkg / package_lib.SAFETENSORS_FILE
  original = weights.read_bytes()
  data = bytearray(original)
  data[len(data) // 2] ^= 0x01  # tensor data: loads, embeds wrong numbers
  weights.write_bytes(bytes(data))
  with pytest.raises(
      package_lib.PackageError, match=f"file {package_lib.SAFETENSORS_FILE} differs"
  ):
    torch_encoder.load(pkg)
  weights.write_bytes(original)
  info = json.loads((pkg / package_lib.PACKAGE_FILE).read_text())
  for key, name in (
      ("safetensors", str(outside / package_lib.SAFETENSORS_FILE)),
      ("safetensors", f"../outside/{package_lib.SAFETENSORS_FILE}"),
      ("config_file", "../outside/config.json"),
  ):
    bad = json.loads(json.dumps(info))
    if key == "config_file":
      bad[key] = name
    else:
      bad["weights"][key] = name
    (pkg / package_lib.PACKAGE_FILE).write_text(json.dumps(bad))
    with pytest.raises(package_lib.PackageError, match="not a name inside the package") as e:
      torch_encoder.load(pkg)
    assert "\n" not in str(e.value) and repr(name) in str(e.value)
  (pkg / package_lib.PACKAGE_FILE).write_text(json.dumps(info))
  assert torch_encoder.load(pkg).embed_prepared(np.zeros((1, 1000), np.float32)).shape == (1, 32)


def test_transposed_short_or_nan_input_is_one_clear_error_as_in_jax(xmae_package):
  enc = torch_encoder.load(xmae_package)
  x = np.random.default_rng(0).normal(size=(2, 2500))  # two 10-s rows at 250 Hz
  with pytest.raises(torch_encoder.TorchEncoderError, match=r"\(2500, 2\).*transposed") as e:
    enc.embed(x.T, fs=250)
  assert "\n" not in str(e.value)
  with pytest.raises(torch_encoder.TorchEncoderError, match="rows of 10 samples"):
    enc.embed(x[:, :10], fs=250)
  with pytest.raises(torch_encoder.TorchEncoderError, match="NaN or inf in 2 of 2 rows"):
    enc.embed_prepared(np.full((2, 1000), np.nan))
  assert enc.embed(x, fs=250).shape == (2, 32)
