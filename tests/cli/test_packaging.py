"""What an installed package carries beyond the code: the model configs (`--config xmae` without a
checkout), the licence, the citation and the metadata."""

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import xmae_jax
from xmae_jax import config_lib

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def test_a_config_name_resolves_to_the_shipped_file():
  assert config_lib.resolve_config_file("xmae") == REPO / "configs" / "xmae.py"
  assert config_lib.resolve_config_file("m2ae.py") == REPO / "configs" / "m2ae.py"
  named = config_lib.load("xmae:tiny,train.lr=0.5")
  assert named.to_dict() == config_lib.load(f"{REPO}/configs/xmae.py:tiny,train.lr=0.5").to_dict()
  assert named.train.lr == 0.5
  assert config_lib.load("xmae_nobridge:tiny").model.use_cross_bridge is False
  assert set(config_lib.config_names()) >= {"xmae", "m2ae", "ppg_mae", "clip", "xmae_nobridge"}


def test_an_unknown_config_is_one_line_naming_the_choices():
  with pytest.raises(config_lib.ConfigError, match="config file nope does not exist .*xmae"):
    config_lib.load("nope:tiny")
  with pytest.raises(config_lib.ConfigError, match="as --config xmae"):
    config_lib.load("elsewhere/configs/xmae.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """The wheel of a copy of the sources (an in-tree build would leave build/ in the checkout)."""
  pytest.importorskip("setuptools")  # built without isolation: no network at test time
  src = tmp_path_factory.mktemp("src")
  for name in ("setup.py", "README.md", "LICENSE"):
    shutil.copy(REPO / name, src / name)
  for name in ("xmae_jax", "configs"):
    shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  out = tmp_path_factory.mktemp("wheel")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "pip",
          "wheel",
          "--no-deps",
          "--no-build-isolation",
          "-q",
          "-w",
          str(out),
          str(src),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  (path,) = out.glob("xmae_jax-*.whl")
  return path


def test_the_wheel_carries_configs_licence_and_metadata(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    metadata = Parser().parsestr(z.read(next(n for n in names if n.endswith("/METADATA"))).decode())
  assert sorted(n.split("/")[-1] for n in names if n.startswith("xmae_jax/configs/")) == CONFIGS
  assert any(n.endswith("licenses/LICENSE") for n in names)
  assert metadata["Version"] == xmae_jax.__version__
  assert metadata["Author"] == "xmae-jax contributors"
  assert "Apache-2.0" in (metadata.get("License-Expression") or metadata.get("License") or "")
  assert "Programming Language :: Python :: 3.11" in metadata.get_all("Classifier")
  assert metadata.get_payload().startswith("# xmae-jax")  # the README as long description


def test_an_installed_wheel_resolves_config_names_without_a_checkout(wheel, tmp_path):
  target = tmp_path / "site"
  subprocess.run(
      [
          sys.executable,
          "-m",
          "pip",
          "install",
          "--no-deps",
          "-q",
          "--target",
          str(target),
          str(wheel),
      ],
      check=True,
      capture_output=True,
      timeout=300,
  )
  # The installed copy first, then the test interpreter's dependencies; run from a folder
  # without configs/ and without this checkout on the path.
  env = dict(os.environ, PYTHONPATH=str(target))
  code = (
      "import xmae_jax.config_lib as c; f = c.resolve_config_file('xmae'); "
      "print(f); print(c.load('m2ae:tiny').model.name)"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      env=env,
      cwd=tmp_path,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  file, model = proc.stdout.split()
  assert Path(file) == target / "xmae_jax" / "configs" / "xmae.py"
  assert model == "m2ae"


def test_licence_and_citation():
  yaml = pytest.importorskip("yaml")
  assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
  cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
  assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
  assert cff["version"] == xmae_jax.__version__ and cff["license"] == "Apache-2.0"
  arxiv = {i["value"] for r in cff["references"] for i in r["identifiers"]}
  assert arxiv == {"arXiv:2605.00973", "arXiv:2605.09579"}  # xMAE and M2AE


TRAIN_ONLY = ("grain", "tensorboardX", "h5py")


def test_the_core_install_leaves_training_modules_to_the_train_extra():
  """setup.py's core holds none of the training-only distributions, and the inference path
  (package loading, embedding, the embed/probe tools) imports none of them; xmae-train names the
  missing extra in one line."""
  text = (REPO / "setup.py").read_text()
  core = text[text.index("CORE = [") : text.index("]", text.index("CORE = ["))]
  assert not any(f'"{name}' in core for name in ("grain", "tensorboardX", "h5py"))
  code = "\n".join(
      [
          "import sys",
          f"for name in {TRAIN_ONLY!r}: sys.modules[name] = None   # not installed",
          "import xmae_jax.evaluation.encoder, xmae_jax.evaluation.embed",
          "from xmae_jax.cli import xmae_embed, xmae_probe, xmae_export, xmae_train",
          "xmae_train.main(['xmae-train', '--config', 'xmae:tiny', '--workdir', sys.argv[1]])",
      ]
  )
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-c", code, "unused-workdir"],
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "xmae-train: error: training needs grain, tensorboardX: pip install 'xmae-jax[train]'"
  )
