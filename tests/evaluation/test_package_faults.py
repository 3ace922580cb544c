"""Faults around encoder packages, each injected: what `xmae-export --overwrite` may replace,
the export's scratch folders, a full disk, a read-only output (export and embed), a damaged
package file, names in package.json leading outside the package, and `embed` inputs the
preprocessing cannot take. Each ends in one line (or the right result) and nothing is lost."""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from xmae_jax.cli import xmae_embed
from xmae_jax.cli import xmae_export
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import export as export_lib
from xmae_jax.evaluation import package as package_lib
from xmae_jax.evaluation import package_swap


def _error(capsys, prog: str) -> str:
  """The one error line of `prog` (and no traceback) on stderr."""
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
  """{relative name: content} of every file under `folder` (to show nothing changed)."""
  return {
      p.relative_to(folder).as_posix(): p.read_bytes()
      for p in sorted(folder.rglob("*"))
      if p.is_file()
  }


def _export(workdir, output, *extra) -> int:
  return xmae_export.main(["--workdir", str(workdir), "--output", str(output), *extra])


# ---- 1, 2: --overwrite replaces a package and nothing else --------------------------------------


def test_overwrite_refuses_the_workdir_and_everything_but_a_package(
    tiny_workdir, tiny_package, tmp_path, capsys
):
  run = tmp_path / "run"
  shutil.copytree(tiny_workdir, run)
  before = _tree(run)
  assert _export(run, run, "--overwrite") == 1  # the run itself
  assert str(run) in _error(capsys, "xmae-export")
  assert _export(run, run / "pkg", "--overwrite") == 1  # a package inside the run
  assert "overlap" in _error(capsys, "xmae-export")
  assert _tree(run) == before and not (run / "pkg").exists()

  notes = tmp_path / "notes"
  (notes / "sub").mkdir(parents=True)
  (notes / "sub" / "a.txt").write_text("mine")
  dataset = tmp_path / "dataset"
  dataset.mkdir()
  (dataset / "manifest.json").write_text("{}")
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  for output in (notes, dataset, a_file):
    kept = _tree(output) if output.is_dir() else output.read_bytes()
    assert _export(tiny_workdir, output, "--overwrite") == 1
    line = _error(capsys, "xmae-export")
    assert str(output) in line and ("not an encoder package" in line or "not a directory" in line)
    assert (_tree(output) if output.is_dir() else output.read_bytes()) == kept

  pkg = tmp_path / "pkg"
  shutil.copytree(tiny_package, pkg)
  (pkg / "notes.txt").write_text("mine")  # a package holding a user's file
  assert _export(tiny_workdir, pkg, "--overwrite") == 1
  assert "notes.txt" in _error(capsys, "xmae-export")
  assert (pkg / "notes.txt").read_text() == "mine"

  (pkg / "notes.txt").unlink()  # a package alone is replaced,
  old_info = json.loads((pkg / "package.json").read_text())
  siblings = [tmp_path / "pkg.old", tmp_path / "pkg.tmp-1-x"]  # and users' folders stay
  for folder in siblings:
    (folder / "keep").mkdir(parents=True)
  assert _export(tiny_workdir, pkg) == 1  # not without --overwrite
  assert "--overwrite" in _error(capsys, "xmae-export")
  assert _export(tiny_workdir, pkg, "--overwrite") == 0
  info = json.loads((pkg / "package.json").read_text())
  assert info["created_utc"] >= old_info["created_utc"] and package_lib.DIGESTS in info
  assert all((folder / "keep").is_dir() for folder in siblings)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["run", "notes", "dataset", "a_file", "pkg", "pkg.old", "pkg.tmp-1-x"]
  )
  assert encoder_lib.load_encoder(pkg).latent_dim == int(info["latent_dim"])


def test_a_package_killed_between_the_two_renames_is_put_back(tiny_xmae, tiny_package, tmp_path):
  """A killed export that had moved the previous package into its scratch folder (and not yet
  the new one into place): the next export puts the previous one back before deciding."""
  import socket
  import subprocess
  import sys

  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  scratch = tmp_path / ".pkg.xmae-export-killed"
  scratch.mkdir()
  (scratch / package_swap.SCRATCH_MARKER).write_text(
      json.dumps({"pid": dead.pid, "host": socket.gethostname(), "output": "pkg"})
  )
  shutil.copytree(tiny_package, scratch / "old")
  before = _tree(scratch / "old")
  package_lib.remove_stale_scratch(tmp_path / "pkg")
  assert _tree(tmp_path / "pkg") == before and not scratch.exists()


# ---- 3: a full disk ----------------------------------------------------------------------------


def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["orbax", "safetensors", "config"])
def test_full_disk_is_one_line_and_keeps_the_previous_package(
    writer, tiny_xmae, tiny_package, tmp_path, monkeypatch
):
  import orbax.checkpoint as ocp
  import safetensors.numpy

  if writer == "orbax":  # TensorStore's error: a ValueError whose text names the errno

    def save(*args, **kwargs):
      raise ValueError(
          f'RESOURCE_EXHAUSTED: Failed writing: "d/1f": {os.strerror(errno.ENOSPC)} '
          "[os_error_code='28']"
      )

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save)
  elif writer == "safetensors":
    monkeypatch.setattr(safetensors.numpy, "save_file", _enospc)
  else:
    write_text = Path.write_text
    monkeypatch.setattr(
        Path,
        "write_text",
        lambda self, *a, **k: _enospc()
        if self.name == (package_lib.CONFIG_FILE)
        else write_text(self, *a, **k),
    )
  out = tmp_path / "pkg"
  shutil.copytree(tiny_package, out)
  before = _tree(out)
  for output, overwrite in ((out, True), (tmp_path / "new", False)):
    with pytest.raises(package_lib.PackageError) as e:
      export_lib.export_model(*tiny_xmae, output, overwrite=overwrite)
    message = str(e.value)
    assert "\n" not in message and str(output) in message and "No space left" in message
  assert _tree(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no scratch, no new/


def test_too_little_free_space_is_refused_before_writing(
    tiny_workdir, tmp_path, monkeypatch, capsys
):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
  assert _export(tiny_workdir, tmp_path / "pkg") == 1
  line = _error(capsys, "xmae-export")
  assert str(tmp_path / "pkg") in line and "No space left" in line and "MB" in line
  assert list(tmp_path.iterdir()) == []


def test_embeddings_write_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
  from xmae_jax.evaluation import embed as embed_lib

  out = tmp_path / "z.npz"
  embed_lib.save_embeddings(out, np.zeros((2, 3)), ["a", "b"], ["1", "2"])
  before = out.read_bytes()
  monkeypatch.setattr(np, "savez", _enospc)
  with pytest.raises(embed_lib.EmbeddingsError) as e:
    embed_lib.save_embeddings(out, np.ones((2, 3)), ["a", "b"], ["1", "2"])
  message = str(e.value)
  assert "\n" not in message and str(out) in message and "No space left" in message
  assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["z.npz"]


# ---- 4: a read-only output ---------------------------------------------------------------------


def _read_only(monkeypatch, folder: Path) -> None:
  """Files cannot be created under `folder` (EROFS), as on a read-only mount; the tests run as
  root, whom a chmod does not stop."""
  real_open = os.open

  def open_(path, flags, *args, **kwargs):
    writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    if writing and os.path.abspath(os.fspath(path)).startswith(str(folder)):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", open_)


def test_read_only_output_is_refused_before_any_work(
    tiny_workdir, tiny_package, tmp_path, monkeypatch, capsys
):
  from xmae_jax.training import model_checkpoint

  def no_work(*args, **kwargs):
    raise AssertionError("work started before the output was checked")

  monkeypatch.setattr(model_checkpoint, "restore_model", no_work)
  monkeypatch.setattr(encoder_lib, "load_encoder", no_work)
  ro = tmp_path / "ro"
  ro.mkdir()
  _read_only(monkeypatch, ro)
  for output in (ro / "pkg", ro / "a" / "b" / "pkg"):
    assert _export(tiny_workdir, output) == 1
    line = _error(capsys, "xmae-export")
    assert "read-only file system" in line and str(output.parent) in line
  assert (
      xmae_embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(tmp_path / "x.csv"),
              "--output",
              str(ro / "z.npz"),
          ]
      )
      == 1
  )
  line = _error(capsys, "xmae-embed")
  assert "read-only file system" in line and str(ro) in line
  assert list(ro.iterdir()) == []


# ---- 6: digests --------------------------------------------------------------------------------


def test_files_added_beside_a_package_join_its_digests_only_when_written(tiny_package, tmp_path):
  pkg = tmp_path / "pkg"
  shutil.copytree(tiny_package, pkg)
  with package_lib.adding_files(pkg, ["stablehlo-ppg.bin"]):
    (pkg / "stablehlo-ppg.bin").write_bytes(b"first")
  digests = package_lib.read_package_info(pkg)[package_lib.DIGESTS]
  assert digests["stablehlo-ppg.bin"] == package_lib.file_digest(pkg / "stablehlo-ppg.bin")
  with pytest.raises(RuntimeError):  # a rewrite cut short: the file is no longer listed
    with package_lib.adding_files(pkg, ["stablehlo-ppg.bin"]):
      (pkg / "stablehlo-ppg.bin").write_bytes(b"half")
      raise RuntimeError("killed")
  info = package_lib.read_package_info(pkg)
  assert "stablehlo-ppg.bin" not in info[package_lib.DIGESTS]
  package_lib.verify_files(pkg, info)  # the rest still verifies
  assert set(info[package_lib.DIGESTS]) == set(digests) - {"stablehlo-ppg.bin"}
  with pytest.raises(package_lib.PackageError, match="'config.json' is not a file a tool may"):
    with package_lib.adding_files(pkg, [package_lib.CONFIG_FILE]):
      pass


def test_package_digests_cover_every_file_and_a_flipped_byte_is_refused(
    tiny_package, tmp_path, capsys
):
  pkg = tmp_path / "pkg"
  shutil.copytree(tiny_package, pkg)
  info = json.loads((pkg / package_lib.PACKAGE_FILE).read_text())
  assert set(info[package_lib.DIGESTS]) == set(_tree(pkg)) - {package_lib.PACKAGE_FILE}
  weights = sorted(
      (p for p in (pkg / "encoder").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
  )[
      -1
  ]  # the largest: tensor data
  for damaged in (weights, pkg / package_lib.SAFETENSORS_FILE):
    data = bytearray(damaged.read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    name = damaged.relative_to(pkg).as_posix()
    with pytest.raises(package_lib.PackageError, match=re.escape(f"file {name} differs")):
      encoder_lib.load_encoder(pkg)
    assert (
        xmae_embed.main(
            [
                "--encoder",
                str(pkg),
                "--input",
                str(tmp_path / "x.csv"),
                "--output",
                str(tmp_path / "z.npz"),
            ]
        )
        == 1
    )
    assert name in _error(capsys, "xmae-embed")
    damaged.write_bytes(original)
  assert not (tmp_path / "z.npz").exists()
  z = encoder_lib.load_encoder(pkg).embed_prepared(np.zeros((1, 1000), np.float32))
  info.pop(package_lib.DIGESTS)  # a package written before digests: unverified
  (pkg / package_lib.PACKAGE_FILE).write_text(json.dumps(info))
  np.testing.assert_array_equal(
      encoder_lib.load_encoder(pkg).embed_prepared(np.zeros((1, 1000), np.float32)), z
  )


# ---- 18: names read from package.json stay inside the package ----------------------------------


@pytest.mark.parametrize(
    "key,name",
    [
        ("config_file", "ABSOLUTE"),
        ("config_file", "../outside/config.json"),
        ("weights", "../outside/encoder"),
        ("weights", "ABSOLUTE"),
        (package_lib.DIGESTS, "../outside/config.json"),
    ],
)
def test_names_leading_outside_the_package_are_refused(key, name, tiny_package, tmp_path):
  outside = tmp_path / "outside"
  shutil.copytree(tiny_package, outside)
  pkg = tmp_path / "pkg"
  shutil.copytree(tiny_package, pkg)
  info = json.loads((pkg / package_lib.PACKAGE_FILE).read_text())
  if name == "ABSOLUTE":
    name = str(outside / ("config.json" if key == "config_file" else "encoder"))
  if key == "weights":
    info["weights"]["orbax"] = name
  elif key == package_lib.DIGESTS:
    info[key][name] = info[key]["config.json"]
  else:
    info[key] = name
  (pkg / package_lib.PACKAGE_FILE).write_text(json.dumps(info))
  with pytest.raises(package_lib.PackageError, match="not a name inside the package") as e:
    encoder_lib.load_encoder(pkg)
  assert "\n" not in str(e.value) and repr(name) in str(e.value)


@pytest.mark.parametrize("with_digests", [True, False])
def test_a_symlinked_encoder_folder_leading_outside_is_refused(
    with_digests, tiny_package, tmp_path
):
  outside = tmp_path / "outside"
  shutil.copytree(tiny_package / "encoder", outside)
  pkg = tmp_path / "pkg"
  shutil.copytree(tiny_package, pkg)
  shutil.rmtree(pkg / "encoder")
  (pkg / "encoder").symlink_to(outside, target_is_directory=True)
  if not with_digests:
    info = json.loads((pkg / package_lib.PACKAGE_FILE).read_text())
    info.pop(package_lib.DIGESTS)
    (pkg / package_lib.PACKAGE_FILE).write_text(json.dumps(info))
  with pytest.raises(package_lib.PackageError, match="leads outside the package") as e:
    encoder_lib.load_encoder(pkg)
  assert str(outside) in str(e.value)


# ---- 17: inputs the preprocessing cannot take --------------------------------------------------


@pytest.fixture(scope="module")
def enc(tiny_package):
  return encoder_lib.load_encoder(tiny_package)


def test_transposed_or_too_short_rows_are_one_clear_error(enc):
  x = np.random.default_rng(0).normal(size=(2, 2500))  # two 10-s rows at 250 Hz
  with pytest.raises(encoder_lib.EncoderInputError) as e:
    enc.embed(x.T, fs=250)
  message = str(e.value)
  assert "\n" not in message and "(2500, 2)" in message and "transposed" in message
  with pytest.raises(encoder_lib.EncoderInputError) as e:
    enc.embed(x[:, :10], fs=250)
  message = str(e.value)
  assert "rows of 10 samples" in message and "10-s window" in message
  assert "transposed" not in message
  assert enc.embed(x, fs=250).shape == (2, enc.latent_dim)


def test_embed_prepared_refuses_nan_as_embed_does(enc):
  windows = np.full((2, 1000), np.nan)
  for call in (
      lambda: enc.embed_prepared(ppg=windows),
      lambda: enc.embed_prepared(windows),
      lambda: enc.embed(windows, fs=100),
  ):
    with pytest.raises(encoder_lib.EncoderInputError, match="NaN or inf in 2 of 2 rows"):
      call()
