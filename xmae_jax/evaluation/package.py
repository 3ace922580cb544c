"""The encoder package format, in one place: what `export` writes and `encoder` reads.

A package directory (written atomically: a scratch folder renamed into place; an existing
output is replaced only when it is a package, `check_output`) holds
  package.json          format name and version, package version, model name, modality and
                        modalities (one, or "ppg+ecg" = ["ppg", "ecg"] for M2AE's joint
                        fingerprint: both modality encoders and the shared bottleneck), source
                        checkpoint and step, latent size, parameter count, the preprocessing
                        contract (sampling rate, segment length, normalization, cleaning), the
                        file names below and every tensor's name, shape, dtype and kind
  config.json           the full model config (ml_collections JSON) the module is rebuilt from
  encoder/              Orbax StandardCheckpointer of {tensor name: array} (parameters and
                        BatchNorm statistics; no optimizer state)
  encoder.safetensors   the same tensors for other frameworks (names and layout: README.md)
  README.md             how to load it, in JAX and without JAX
                        (xmae_jax.evaluation.package_readme)
  MODEL_CARD.md         training data and its licence, preprocessing, metrics, limits
                        (xmae_jax.evaluation.model_card)
package.json also holds the sha256 digest of every other file (`sha256`: {relative name:
digest}), also of the files xmae-export --stablehlo / --onnx add later (`adding_files`);
`verify_files` checks them when a package is loaded, and every name read from package.json must
stay inside the package (`member`).

Tensor names are the dotted attribute paths of the Flax NNX module (`checkpoint.flatten`), the
same in package.json, the Orbax item and the safetensors file. A reader accepts exactly
FORMAT_VERSION; FORMAT_VERSION or an older one it still reads (READABLE_VERSIONS); a package of
another version is refused with a message naming both versions, so a format change bumps the
version here and nowhere else.

Versions: 1 = one modality's encoder (no "modalities" key); 2 = adds "modalities", and
modality "ppg+ecg" (M2AE's joint fingerprint package).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from xmae_jax import atomic
from xmae_jax import config_lib
from xmae_jax import paths
from xmae_jax.errors import XmaeError
from xmae_jax.errors import storage_reason
from xmae_jax.evaluation import model_card
from xmae_jax.evaluation import package_readme
from xmae_jax.evaluation import package_swap
from xmae_jax.version import __version__

FORMAT_NAME = "xmae-jax-encoder"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The modalities a package can hold, in the order a joint package names them ("ppg+ecg").
MODALITIES = ("ppg", "ecg")
JOINT = "+".join(MODALITIES)
PACKAGE_FILE = "package.json"
CONFIG_FILE = "config.json"
WEIGHTS_DIR = "encoder"
SAFETENSORS_FILE = "encoder.safetensors"
README_FILE = "README.md"
# Tensor kinds in package.json: trainable parameters and BatchNorm running statistics.
KINDS = ("param", "batch_stat", "other")
# Everything a package folder holds: an existing folder is replaced only when it holds no more.
PACKAGE_MEMBERS = (
    PACKAGE_FILE,
    CONFIG_FILE,
    WEIGHTS_DIR,
    SAFETENSORS_FILE,
    README_FILE,
    model_card.FILE,
)
# Files `xmae-export --stablehlo/--onnx` add to a finished package (xmae_jax/interop).
EXTRA_MEMBER_PREFIXES = ("stablehlo", "onnx-")


def is_member_name(name: str) -> bool:
  """Whether a top-level name in a package folder is one of the package's own files."""
  return name in PACKAGE_MEMBERS or name.startswith(EXTRA_MEMBER_PREFIXES)


class PackageError(XmaeError):
  """A package that cannot be read (missing, corrupt, written in another format version)."""


# ---- writing ----------------------------------------------------------------------------------


def package_info(
    *,
    model_name: str,
    modality: str,
    latent_dim: int,
    param_count: int,
    contract: dict[str, Any],
    preprocessing: dict[str, Any],
    source: dict[str, Any] | None,
    tensors: dict[str, np.ndarray],
    kinds: dict[str, str],
    segment_length: int,
) -> dict[str, Any]:
  """The package.json document (schema FORMAT_VERSION)."""
  modalities = modalities_of(modality)
  return {
      "format": FORMAT_NAME,
      "format_version": FORMAT_VERSION,
      "package_version": __version__,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "model_name": model_name,
      "modality": modality,
      "modalities": list(modalities),
      "latent_dim": int(latent_dim),
      "param_count": int(param_count),
      "source": source or {},
      "contract": contract,
      "preprocessing": preprocessing,
      "config_file": CONFIG_FILE,
      "weights": {"orbax": WEIGHTS_DIR, "safetensors": SAFETENSORS_FILE},
      "tensors": {
          k: {"shape": list(v.shape), "dtype": str(v.dtype), "kind": kinds[k]}
          for k, v in sorted(tensors.items())
      },
      "call": f"{' and/or '.join(modalities)} (B, {segment_length}) float32 -> "
      f"(B, {int(latent_dim)})",
  }


def modalities_of(modality: str) -> tuple[str, ...]:
  """ "ppg" -> ("ppg",); "ppg+ecg" -> ("ppg", "ecg")."""
  if modality == JOINT:
    return MODALITIES
  if modality in MODALITIES:
    return (modality,)
  raise PackageError(f"unknown modality {modality!r}; expected ppg, ecg or {JOINT}")


def package_modalities(info: dict) -> tuple[str, ...]:
  """The modalities a package embeds (format 1 packages name one, in "modality")."""
  return tuple(info.get("modalities") or modalities_of(info["modality"]))


def check_output(output: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """`output` as an absolute path, when a package may be written there: a new path, an empty
  folder, or (with `overwrite` only) a previous encoder package, recognized by its package.json
  and holding nothing but the package's own files. Anything else is refused in one line, so
  `--overwrite` never deletes a run, a dataset or a folder of notes."""
  output = paths.absolute(output)
  if not output.exists():
    return output
  if not output.is_dir():
    raise PackageError(f"output {output} exists and is not a directory: choose another --output")
  entries = sorted(p.name for p in output.iterdir())
  if not entries:
    return output
  if not _is_our_package(output):
    raise PackageError(
        f"output {output} exists and is not an encoder package (no {PACKAGE_FILE} "
        f"of format {FORMAT_NAME!r}): --overwrite replaces only a package; choose "
        "another --output"
    )
  foreign = [e for e in entries if not is_member_name(e)]
  if foreign:
    raise PackageError(
        f"output {output} is an encoder package but also holds {foreign[0]!r}, "
        "which replacing it would delete: move that away or choose another --output"
    )
  if not overwrite:
    raise PackageError(f"output {output} exists (pass --overwrite to replace it)")
  return output


def _is_our_package(path: Path) -> bool:
  try:
    info = json.loads((path / PACKAGE_FILE).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return False
  return isinstance(info, dict) and info.get("format") == FORMAT_NAME


def write_package(
    output: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    info: dict,
    config_dict: dict,
    *,
    overwrite: bool = False,
) -> Path:
  """Writes every file of the package (and the sha256 digest of each, in package.json) into a
  scratch folder beside `output`, then swaps it into place, so `output` is either the old
  package or the complete new one. A failed write (full disk, read-only file system) is one
  PackageError line naming `output`, and leaves it as it was."""
  # Orbax loads JAX: torch_encoder reads packages through this module without JAX.
  import orbax.checkpoint as ocp

  if paths.is_remote(output):
    return _write_remote(output, tensors, info, config_dict, overwrite=overwrite)
  output = Path(output).absolute()
  with _writing(output):
    remove_stale_scratch(output)  # first: it may put back a package a killed export moved
    check_output(output, overwrite=overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    check_space(output.parent, output, tensors)
    scratch = package_swap.make_scratch(output)
  try:
    with _writing(output):
      new = scratch / package_swap.NEW
      new.mkdir()
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(new / WEIGHTS_DIR, tensors)
        ckptr.wait_until_finished()
      _save_safetensors(new / SAFETENSORS_FILE, tensors, info)
      (new / CONFIG_FILE).write_text(json.dumps(config_dict, indent=1, sort_keys=True))
      (new / README_FILE).write_text(package_readme.render(info))
      (new / model_card.FILE).write_text(model_card.render(info, config_dict))
      info = {**info, DIGESTS: file_digests(new)}
      (new / PACKAGE_FILE).write_text(json.dumps(info, indent=1))
      check_output(output, overwrite=overwrite)  # still ours to replace after the long write
      package_swap.swap(scratch, output)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return output


def _write_remote(
    output, tensors: dict[str, np.ndarray], info: dict, config_dict: dict, *, overwrite: bool
):
  """A gs:// package: written complete in a local folder, then uploaded one object per file,
  package.json last (a reader goes by package.json, so it finds either the old package's or
  the new one's, and each file it lists already there)."""
  remote = check_output(output, overwrite=overwrite)
  with tempfile.TemporaryDirectory(prefix="xmae-export-") as d:
    local = write_package(Path(d) / "package", tensors, info, config_dict)
    for f in sorted(local.iterdir()):
      if f.name != PACKAGE_FILE:
        paths.upload(f, remote / f.name)
    paths.upload(local / PACKAGE_FILE, remote / PACKAGE_FILE)
  return remote


def remove_stale_scratch(output: Path) -> None:
  """The scratch folders of exports to `output` killed mid-write, removed (`package_swap`); a
  package one of them holds is put back first when `output` is missing."""
  package_swap.remove_stale(output, is_ours=_is_our_package)


@contextlib.contextmanager
def _writing(output: Path):
  """A failed write (full disk, read-only file system, no permission) as one line naming the
  package; Orbax and TensorStore wrap the OSError, so its cause or text is looked for. The
  error records (with tracebacks) Orbax logs while a save fails are held back, and logged after
  all unless the failure was such a write."""
  held = _HeldErrors()
  logger = logging.getLogger("absl")
  logger.addFilter(held)
  existed = output.exists()
  try:
    yield
  except XmaeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # whatever the writers wrap it in
    reason = storage_reason(e, system_text=True)
    if reason is None:
      raise
    held.records.clear()
    raise PackageError(
        f"cannot write encoder package {output}: {reason} ("
        + ("the previous package is unchanged)" if existed else "nothing was written)")
    ) from None
  finally:
    logger.removeFilter(held)
    for record in held.records:
      logger.handle(record)


class _HeldErrors(logging.Filter):

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record):
    if record.levelno >= logging.ERROR:
      self.records.append(record)
      return False
    return True


def check_space(folder: Path, output: Path, tensors: dict[str, np.ndarray]) -> None:
  """Refuses, before writing, a package that cannot fit in the free space of `folder`: its two
  copies of the tensors (Orbax and safetensors) and a margin for the small files."""
  need = 2 * sum(int(np.asarray(v).nbytes) for v in tensors.values()) + (256 << 10)
  free = shutil.disk_usage(folder).free
  if free < need:
    raise PackageError(
        f"cannot write encoder package {output}: {os.strerror(errno.ENOSPC)} (it "
        f"needs about {need / 1e6:.1f} MB, {free / 1e6:.1f} MB are free)"
    )


# ---- digests ------------------------------------------------------------------------------------

# package.json's key of {file name relative to the package: sha256 hex digest} of every other
# file; a package written before digests existed has none and is read unverified.
DIGESTS = "sha256"


def file_digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
  """{relative POSIX name: sha256} of every file under `folder` but package.json."""
  return {
      p.relative_to(folder).as_posix(): file_digest(p)
      for p in sorted(folder.rglob("*"))
      if p.is_file() and p != folder / PACKAGE_FILE
  }


def verify_files(path, info: dict) -> None:
  """Raises PackageError naming the first file of the package whose sha256 differs from the one
  recorded at export (or that is missing, or leads outside the package)."""
  path = Path(path)
  digests = info.get(DIGESTS)
  if digests is None:
    return
  if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
    raise PackageError(f"{path / PACKAGE_FILE}: {DIGESTS!r} is not a map of file digests")
  for name, want in sorted(digests.items()):
    file = member(path, name, "file")
    if not file.is_file():
      raise PackageError(f"encoder package {path}: file {name} is missing")
    if file_digest(file) != want:
      raise PackageError(
          f"encoder package {path}: file {name} differs from what was exported "
          "(sha256 mismatch): the package is damaged; export it again"
      )


@contextlib.contextmanager
def adding_files(path, names):
  """Around a tool that writes `names` (files beside the package's own: `is_member_name`, e.g.
  xmae-export --stablehlo / --onnx) into an existing local package: their old digests leave
  package.json first, so a write cut short leaves them unlisted (read unverified) rather than
  "damaged"; when the block succeeds, the new files' digests join the others, and `verify_files`
  refuses a changed one as it refuses a changed weight file. A package without digests (written
  before they existed) stays without."""
  path = Path(path)
  names = sorted(set(names))
  for name in names:
    if name in PACKAGE_MEMBERS or not is_member_name(name):
      raise PackageError(f"encoder package {path}: {name!r} is not a file a tool may add to it")
  info = read_package_info(path)
  if not isinstance(info.get(DIGESTS), dict):
    yield
    return
  kept = {k: v for k, v in info[DIGESTS].items() if k not in names}
  atomic.atomic_write(path / PACKAGE_FILE, json.dumps({**info, DIGESTS: kept}, indent=1))
  yield
  info = read_package_info(path)
  added = {name: file_digest(member(path, name, "file")) for name in names}
  atomic.atomic_write(
      path / PACKAGE_FILE, json.dumps({**info, DIGESTS: {**info[DIGESTS], **added}}, indent=1)
  )


def member(path, name: Any, what: str) -> Path:
  """path/name for a `name` read from package.json, refused in one line unless it stays inside
  the package: no absolute path, no `..`, no symbolic link leading out."""
  path = Path(path)
  if (
      not isinstance(name, str)
      or not name
      or os.path.isabs(name)
      or "\\" in name
      or ".." in Path(name).parts
  ):
    raise PackageError(f"{path / PACKAGE_FILE}: {what} {name!r} is not a name inside the package")
  target = path / name
  root, real = path.resolve(), target.resolve()
  if root not in real.parents:
    raise PackageError(
        f"encoder package {path}: {what} {name} leads outside the package " f"(to {real})"
    )
  return target


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray], info: dict) -> None:
  metadata = {
      "format": info["format"],
      "format_version": str(info["format_version"]),
      "model_name": info["model_name"],
      "modality": info["modality"],
      "package_version": info["package_version"],
  }
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata
  )


# ---- reading ----------------------------------------------------------------------------------


def read_package_info(path) -> dict:
  """package.json of an exported package, checked for format and version."""
  path = paths.path(path)
  file = path / PACKAGE_FILE
  if not path.exists():
    raise PackageError(f"encoder package {path} does not exist")
  if not file.is_file():
    raise PackageError(
        f"{path} is not an encoder package (no {PACKAGE_FILE}; write one with xmae-export)"
    )
  try:
    info = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PackageError(f"{file} is not valid JSON ({e})") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
    raise PackageError(
        f"{file} is not an xmae-jax encoder package (format "
        f"{info.get('format') if isinstance(info, dict) else '?'!r})"
    )
  if info.get("format_version") not in READABLE_VERSIONS:
    raise PackageError(
        f"encoder package {path} has format version {info.get('format_version')!r} (written by "
        f"xmae-jax {info.get('package_version', '?')}); this xmae-jax {__version__} reads format "
        f"version {' or '.join(map(str, READABLE_VERSIONS))}: re-export it with this version"
    )
  return info


def is_package(path) -> bool:
  return (paths.path(path) / PACKAGE_FILE).is_file()


def read_config(path, info: dict):
  """The model config stored in the package."""
  path = Path(path)
  file = member(path, info.get("config_file"), "config file")
  try:
    return config_lib.config_from_dict(json.loads(file.read_text()))
  except (OSError, KeyError, json.JSONDecodeError) as e:
    raise PackageError(f"{path}: unreadable model config ({e})") from None


def restore_tensors(path, info: dict, target: dict) -> dict:
  """{tensor name: array} from the package's Orbax item, shaped and placed like `target`
  (abstract arrays)."""
  # Orbax loads JAX: torch_encoder reads packages through this module without JAX.
  import orbax.checkpoint as ocp

  path = Path(path)
  weights = info.get("weights")
  weights_dir = member(
      path, weights.get("orbax") if isinstance(weights, dict) else None, "weights directory"
  )
  if not weights_dir.is_dir():
    raise PackageError(f"{path}: weights directory {weights_dir.name}/ is missing")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(weights_dir, target)
  except Exception as e:  # Orbax raises many types for missing or mis-shaped entries
    raise PackageError(
        f"{path}: cannot restore encoder weights ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]})"
    ) from None
