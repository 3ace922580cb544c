"""The encoder package format, in one place: what `export` writes and `encoder` reads.

A package directory (written atomically: a temporary directory renamed into place) holds
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

Tensor names are the dotted attribute paths of the Flax NNX module (`checkpoint.flatten`), the
same in package.json, the Orbax item and the safetensors file. A reader accepts exactly
FORMAT_VERSION; FORMAT_VERSION or an older one it still reads (READABLE_VERSIONS); a package of another
version is refused with a message naming both versions, so a format change bumps the version here
and nowhere else.

Versions: 1 = one modality's encoder (no "modalities" key); 2 = adds "modalities", and
modality "ppg+ecg" (M2AE's joint fingerprint package).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from xmae_jax import __version__
from xmae_jax import config_lib
from xmae_jax.errors import XmaeError

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


class PackageError(XmaeError):
  """A package that cannot be read (missing, corrupt, written in another format version)."""


# ---- writing ----------------------------------------------------------------------------------

def package_info(*, model_name: str, modality: str, latent_dim: int, param_count: int,
                 contract: dict[str, Any], preprocessing: dict[str, Any],
                 source: dict[str, Any] | None, tensors: dict[str, np.ndarray],
                 kinds: dict[str, str], segment_length: int) -> dict[str, Any]:
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
      "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "kind": kinds[k]}
                  for k, v in sorted(tensors.items())},
      "call": f"{' and/or '.join(modalities)} (B, {segment_length}) float32 -> "
              f"(B, {int(latent_dim)})",
  }


def modalities_of(modality: str) -> tuple[str, ...]:
  """"ppg" -> ("ppg",); "ppg+ecg" -> ("ppg", "ecg")."""
  if modality == JOINT:
    return MODALITIES
  if modality in MODALITIES:
    return (modality,)
  raise PackageError(f"unknown modality {modality!r}; expected ppg, ecg or {JOINT}")


def package_modalities(info: dict) -> tuple[str, ...]:
  """The modalities a package embeds (format 1 packages name one, in "modality")."""
  return tuple(info.get("modalities") or modalities_of(info["modality"]))


def write_package(output: str | os.PathLike, tensors: dict[str, np.ndarray], info: dict,
                  config_dict: dict) -> Path:
  """Writes every file of the package into a temporary directory beside `output`, then swaps
  it into place, so `output` is either the old package or the complete new one."""
  import orbax.checkpoint as ocp
  output = Path(output).absolute()
  output.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temporaries(output)
  tmp = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-{os.getpid()}-", dir=output.parent))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / WEIGHTS_DIR, tensors)
      ckptr.wait_until_finished()
    _save_safetensors(tmp / SAFETENSORS_FILE, tensors, info)
    (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=1, sort_keys=True))
    (tmp / README_FILE).write_text(package_readme(info))
    (tmp / PACKAGE_FILE).write_text(json.dumps(info, indent=1))
    _replace_dir(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return output


def remove_stale_temporaries(output: Path) -> None:
  """Removes the temporary directories of exports to `output` whose process is gone (an export
  killed mid-write); those of a live export are left alone."""
  for tmp in output.parent.glob(f"{output.name}.tmp-*"):
    pid = tmp.name[len(output.name) + len(".tmp-"):].split("-")[0]
    if tmp.is_dir() and not (pid.isdigit() and _alive(int(pid))):
      shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    return True
  return True


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray], info: dict) -> None:
  from safetensors.numpy import save_file
  metadata = {"format": info["format"], "format_version": str(info["format_version"]),
              "model_name": info["model_name"], "modality": info["modality"],
              "package_version": info["package_version"]}
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def _replace_dir(tmp: Path, output: Path) -> None:
  """Renames the finished directory `tmp` to `output`; an existing `output` is moved aside first
  (a directory cannot be replaced by one rename) and removed only after the swap."""
  if output.exists():
    old = output.with_name(output.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, output)


def package_readme(info: dict) -> str:
  c = info["contract"]
  modalities = package_modalities(info)
  what = "+".join(modalities).upper()
  if len(modalities) > 1:
    what_text = (f"Frozen {info['model_name']} fingerprint encoder of {' and '.join(m.upper() for m in modalities)} "
                 "(each modality's encoder and the shared bottleneck): either modality alone or "
                 "both give a fingerprint in one latent space")
    loading = [
        "z = enc.embed(ppg=p, ecg=e, fs=125)       # p, e: (N, L) the same windows -> (N, latent)",
        "z_ppg = enc.embed(ppg=p, fs=125)          # PPG alone: same space, same shape",
        "z_ecg = enc.embed(ecg=e, fs=125)          # ECG alone",
        "z = enc.embed_prepared(ppg=W1, ecg=W2)    # prepared (N, L) windows, no preprocessing",
    ]
  else:
    what_text = f"Frozen {what} encoder"
    loading = [
        "z = enc.embed(x, fs=125)                  # x: (N, L) raw or prepared -> (N, latent)",
        f"z = enc.embed({modalities[0]}=x, fs=125)  # the same, by keyword",
    ]
  lines = [
      f"# {info['model_name']} {what} encoder (xmae-jax {info['package_version']})",
      "",
      f"{what_text}, {info['param_count']:,} parameters, "
      f"embedding size {info['latent_dim']}. Source: {json.dumps(info['source'])}.",
      "",
      "## Input contract",
      f"* {c['segment_length']} samples = {c['segment_seconds']:g} s at {c['sampling_rate']:g} Hz, "
      "one segment per row, float32.",
      f"* Normalization: {c['normalization_text']}.",
      f"* Training data were cleaned with NeuroKit2 (`ecg_clean` method {c['ecg_clean_method']!r}, "
      f"`ppg_clean` method {c['ppg_clean_method']!r}) at the source rate, then resampled "
      f"({c['resample_method']}) to {c['sampling_rate']:g} Hz.",
      "",
      "## Loading",
      "```python",
      "import xmae_jax",
      "enc = xmae_jax.load_encoder('PATH')        # this directory",
      *loading,
      "```",
      "`embed` resamples, windows (10-s windows averaged per row) and normalizes when `fs` or `L`",
      "differ from the contract, and min-max normalizes contract-shaped rows.",
      "",
      "## Weights without JAX",
      f"`{SAFETENSORS_FILE}` holds every tensor (also in `{WEIGHTS_DIR}/`, an Orbax checkpoint).",
      "Names are the dotted attribute paths of the Flax NNX module (`package.json` lists each",
      "name's shape, dtype and kind: `param` or `batch_stat`). Layouts are Flax's: `nnx.Linear`",
      "kernels are (in, out); `nnx.Conv` kernels are (width, in, out) on channels-last (B, L, C)",
      "inputs; `nnx.ConvTranspose` likewise; BatchNorm keeps `scale`, `bias` (params) and `mean`,",
      "`var` (batch statistics, used at inference). A PyTorch user transposes Linear kernels and",
      "moves the conv kernel's width axis last ((out, in, width) = kernel.transpose(2, 1, 0)).",
      "`xmae_jax.interop.torch_encoder.load('PATH')` does all of this: the encoder as a",
      "`torch.nn.Module` with `embed(x, fs)`, without importing JAX.",
      "",
      "## Tensors",
      "| name | shape | kind |",
      "|---|---|---|",
  ]
  for name, t in info["tensors"].items():
    lines.append(f"| `{name}` | {tuple(t['shape'])} | {t['kind']} |")
  return "\n".join(lines) + "\n"


# ---- reading ----------------------------------------------------------------------------------

def read_package_info(path) -> dict:
  """package.json of an exported package, checked for format and version."""
  path = Path(path)
  file = path / PACKAGE_FILE
  if not path.exists():
    raise PackageError(f"encoder package {path} does not exist")
  if not file.is_file():
    raise PackageError(f"{path} is not an encoder package (no {PACKAGE_FILE}; write one with xmae-export)")
  try:
    info = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PackageError(f"{file} is not valid JSON ({e})") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
    raise PackageError(f"{file} is not an xmae-jax encoder package (format {info.get('format') if isinstance(info, dict) else '?'!r})")
  if info.get("format_version") not in READABLE_VERSIONS:
    raise PackageError(
        f"encoder package {path} has format version {info.get('format_version')!r} (written by "
        f"xmae-jax {info.get('package_version', '?')}); this xmae-jax {__version__} reads format "
        f"version {' or '.join(map(str, READABLE_VERSIONS))}: re-export it with this version")
  return info


def is_package(path) -> bool:
  return (Path(path) / PACKAGE_FILE).is_file()


def read_config(path, info: dict):
  """The model config stored in the package."""
  path = Path(path)
  try:
    return config_lib.config_from_dict(json.loads((path / info["config_file"]).read_text()))
  except (OSError, KeyError, json.JSONDecodeError) as e:
    raise PackageError(f"{path}: unreadable model config ({e})") from None


def restore_tensors(path, info: dict, target: dict) -> dict:
  """{tensor name: array} from the package's Orbax item, shaped and placed like `target`
  (abstract arrays)."""
  import orbax.checkpoint as ocp
  path = Path(path)
  weights_dir = path / info["weights"]["orbax"]
  if not weights_dir.is_dir():
    raise PackageError(f"{path}: weights directory {weights_dir.name}/ is missing")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(weights_dir, target)
  except Exception as e:   # Orbax raises many types for missing or mis-shaped entries
    raise PackageError(f"{path}: cannot restore encoder weights ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:300]})") from None
