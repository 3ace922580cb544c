"""The portable StableHLO artifact of a package (xmae_jax.interop.stablehlo, xmae-export
--stablehlo): written with its input contract, run from a fresh process that imports only jax
and numpy, to the numbers of `load_encoder(...).embed_prepared`; and the numpy example."""

import json
import shutil

import numpy as np
import pytest

import xmae_jax
from tests.helpers import datasets
from tests.helpers import mp_util
from tests.helpers import tiny_models
from xmae_jax.evaluation import package as package_lib
from xmae_jax.interop import stablehlo

REPO = tiny_models.REPO

TOL = 1e-5

# Run in a fresh interpreter: reads the contract, deserializes each function and calls it on
# the saved windows; nothing of xmae_jax or Flax may be imported.
RUN_ARTIFACT = """
import json, sys
from pathlib import Path
import jax, numpy as np
package, windows_file, out_file = sys.argv[1:]
contract = json.loads((Path(package) / "stablehlo.json").read_text())
windows = np.load(windows_file)                  # {modality: (B, L) prepared windows}
out = {}
for name, f in contract["functions"].items():
  exp = jax.export.deserialize(bytearray((Path(package) / f["file"]).read_bytes()))
  args = [windows[i["name"]] for i in f["inputs"]]
  out[name] = np.asarray(exp.call(*args))
np.savez(out_file, **out)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("xmae_jax", "flax"))
assert not bad, bad
"""


@pytest.fixture(scope="module")
def joint_package(tmp_path_factory):
  """A tiny M2AE ppg+ecg package with its StableHLO artifact, written by xmae-export."""
  from flax import nnx

  from xmae_jax import config_lib
  from xmae_jax import models
  from xmae_jax.cli import xmae_export
  from xmae_jax.training import model_checkpoint

  root = tmp_path_factory.mktemp("shlo")
  config = config_lib.load(f"{REPO / 'configs' / 'm2ae'}.py:tiny")
  model = models.build(config, nnx.Rngs(5))
  model_checkpoint.write_model_checkpoint(root / "workdir", model, config, step=2)
  out = root / "fingerprint"
  assert (
      xmae_export.main(
          [
              "--workdir",
              str(root / "workdir"),
              "--output",
              str(out),
              "--modality",
              "ppg+ecg",
              "--stablehlo",
          ]
      )
      == 0
  )
  return out


@pytest.fixture(scope="module")
def xmae_package(tmp_path_factory):
  out = tiny_models.tiny_package(tmp_path_factory.mktemp("shlo") / "xmae", "xmae", "ppg", seed=3)
  stablehlo.write_artifact(out)
  return out


def test_contract_names_the_inputs_rate_and_files(joint_package):
  c = stablehlo.read_contract(joint_package)
  assert c["sampling_rate"] == 100 and c["segment_length"] == 1000 and c["dtype"] == "float32"
  assert list(c["functions"]) == ["ppg", "ecg", "ppg+ecg"]
  both = c["functions"]["ppg+ecg"]
  assert [i["name"] for i in both["inputs"]] == ["ppg", "ecg"]
  assert both["inputs"][0]["shape"] == ["batch", 1000]
  assert both["output"]["shape"] == ["batch", c["latent_dim"]]
  assert all((joint_package / f["file"]).is_file() for f in c["functions"].values())
  assert set(c["platforms"]) == {"cpu", "cuda"}


def test_artifact_runs_in_a_fresh_process_to_the_same_numbers(
    joint_package, physionet_dir, tmp_path
):
  enc = xmae_jax.load_encoder(joint_package)
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH", seconds=20)
  ecg, _ = datasets.record_rows(physionet_dir, "II", seconds=20)
  windows = {
      "ppg": enc.prepare(ppg, fs, modality="ppg")[0],  # (2, 1000) each
      "ecg": enc.prepare(ecg, fs, modality="ecg")[0],
  }
  np.savez(tmp_path / "w.npz", **windows)
  done = mp_util.run_python(
      ["-c", RUN_ARTIFACT, str(joint_package), str(tmp_path / "w.npz"), str(tmp_path / "z.npz")]
  )
  assert done.returncode == 0, done.stderr[-2000:]
  got = np.load(tmp_path / "z.npz")
  want = {
      "ppg": enc.embed_prepared(ppg=windows["ppg"]),
      "ecg": enc.embed_prepared(ecg=windows["ecg"]),
      "ppg+ecg": enc.embed_prepared(**windows),
  }
  for name, z in want.items():
    np.testing.assert_allclose(got[name], z, atol=TOL, rtol=0, err_msg=name)
  assert np.abs(want["ppg"] - want["ecg"]).max() > 1e-3


def test_artifact_files_are_in_the_package_digests_and_a_changed_one_is_refused(
    joint_package, tmp_path
):
  info = package_lib.read_package_info(joint_package)
  added = {"stablehlo.json", "stablehlo-ppg.bin", "stablehlo-ecg.bin", "stablehlo-ppg+ecg.bin"}
  assert added <= set(info[package_lib.DIGESTS])
  copy = tmp_path / "package"
  shutil.copytree(joint_package, copy)
  artifact = copy / "stablehlo-ppg.bin"
  data = bytearray(artifact.read_bytes())
  data[len(data) // 2] ^= 0xFF
  artifact.write_bytes(bytes(data))
  for load in (stablehlo.load_artifact, xmae_jax.load_encoder):
    with pytest.raises(package_lib.PackageError) as e:
      load(copy)
    assert str(e.value) == (
        f"encoder package {copy}: file stablehlo-ppg.bin differs from what was exported "
        "(sha256 mismatch): the package is damaged; export it again"
    )


def test_missing_artifact_is_one_line(tmp_path):
  with pytest.raises(stablehlo.StableHLOError, match="xmae-export --stablehlo"):
    stablehlo.load_artifact(tmp_path)


def test_numpy_example_both_ways_matches_load_encoder(xmae_package, physionet_dir, tmp_path):
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  want = xmae_jax.load_encoder(xmae_package).embed(ppg, fs=fs)
  for via in ("load_encoder", "stablehlo"):
    out = tmp_path / f"{via}.npy"
    done = mp_util.run_python(
        [
            "examples/embed_with_numpy.py",
            str(xmae_package),
            str(physionet_dir / "a103l"),
            "--via",
            via,
            "--output",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["embeddings"] == [3, 32]
    if via == "stablehlo":
      assert report["flax_imported"] is False
    np.testing.assert_allclose(np.load(out), want, atol=TOL, rtol=0, err_msg=via)
