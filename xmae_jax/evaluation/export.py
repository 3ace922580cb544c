"""Exported encoder packages: one frozen modality encoder, self-contained, for downstream use.

A package directory (written atomically: a temporary directory renamed into place) holds
  package.json          format name and version, package version, model name, modality, source
                        checkpoint and step, latent size, parameter count, the preprocessing
                        contract (sampling rate, segment length, normalization, cleaning), the
                        file names below and every tensor's name, shape, dtype and kind
  config.json           the full model config (ml_collections JSON) the module is rebuilt from
  encoder/              Orbax StandardCheckpointer of {tensor name: array} (parameters and
                        BatchNorm statistics; no optimizer state, no RNG state)
  encoder.safetensors   the same tensors for other frameworks (names and layout: README.md)
  README.md             how to load it, in JAX and without JAX
Load it with `xmae_jax.load_encoder(OUT)`; see xmae_jax.evaluation.encoder.
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
from xmae_jax.evaluation import encoder as encoder_lib

WEIGHTS_DIR = "encoder"
SAFETENSORS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
README_FILE = "README.md"


class ExportError(ValueError):
  """An export that cannot be done as asked (no checkpoint, existing output, no such encoder)."""


def _weights(module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """{name: float32/int array} of the module's variables except RNG state, and each one's kind."""
  from flax import nnx
  from xmae_jax.training import checkpoint
  _, _, weights = nnx.split(module, nnx.RngState, ...)
  flat = {k: np.asarray(v) for k, v in checkpoint.flatten(weights).items()}
  params = set(checkpoint.flatten(nnx.state(module, nnx.Param)))
  stats = set(checkpoint.flatten(nnx.state(module, nnx.BatchStat)))
  kinds = {k: "param" if k in params else "batch_stat" if k in stats else "other" for k in flat}
  return flat, kinds


def export_model(model, config, output: str | os.PathLike, *, modality: str = "ppg",
                 source: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
  """Writes the package of `model`'s `modality` encoder to `output`; returns its path."""
  import orbax.checkpoint as ocp
  from xmae_jax.training import checkpoint
  output = Path(output).absolute()
  if output.exists() and not overwrite:
    raise ExportError(f"output {output} exists (pass --overwrite to replace it)")
  module = encoder_lib.encoder_module(model, modality)
  module.eval()
  flat, kinds = _weights(module)
  bad = sorted(k for k, v in flat.items() if v.dtype.kind == "f" and not np.isfinite(v).all())
  if bad:   # a package must never embed to NaN
    raise ExportError(f"the {modality} encoder holds non-finite weights ({len(bad)} tensors, "
                      f"e.g. {bad[0]!r}): refusing to export")
  contract = encoder_lib.Contract.from_config(config)
  config_dict = checkpoint.config_to_dict(config)
  info = {
      "format": encoder_lib.FORMAT_NAME,
      "format_version": encoder_lib.FORMAT_VERSION,
      "package_version": __version__,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "model_name": str(config.model.name),
      "modality": modality,
      "latent_dim": int(config.model.latent_dim),
      "param_count": encoder_lib.count_parameters(module),
      "source": source or {},
      "contract": contract.as_dict(),
      "preprocessing": _dataset_preprocessing(config),
      "config_file": CONFIG_FILE,
      "weights": {"orbax": WEIGHTS_DIR, "safetensors": SAFETENSORS_FILE},
      "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "kind": kinds[k]}
                  for k, v in sorted(flat.items())},
      "call": f"{modality} (B, {contract.segment_length}) float32 -> (B, {int(config.model.latent_dim)})",
  }
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=output.name + ".tmp-", dir=output.parent))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / WEIGHTS_DIR, flat)
      ckptr.wait_until_finished()
    _save_safetensors(tmp / SAFETENSORS_FILE, flat, info)
    (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=1, sort_keys=True))
    (tmp / README_FILE).write_text(package_readme(info))
    (tmp / encoder_lib.PACKAGE_FILE).write_text(json.dumps(info, indent=1))
    _replace_dir(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return output


def export_workdir(workdir, output, *, modality: str = "ppg", step: str | int = "auto",
                   overwrite: bool = False) -> Path:
  """The package of a training (or imported) workdir's checkpoint."""
  from xmae_jax.training import checkpoint
  try:   # a corrupt checkpoint is skipped for the next candidate, with one line on stderr
    model, config, resolved, m = checkpoint.restore_model(workdir, step)
  except checkpoint.CheckpointError as e:
    raise ExportError(str(e)) from None
  source = {"workdir": str(Path(workdir).absolute()), "step": resolved, "requested_step": str(step),
            "checkpoint_kind": m.get("kind"), "val_loss": m.get("val_loss"),
            "written_by": m.get("package_version")}
  return export_model(model, config, output, modality=modality, source=source, overwrite=overwrite)


def _dataset_preprocessing(config) -> dict:
  """The prepared dataset's preprocessing parameters, when its manifest is readable."""
  data_dir = str(config.get("data", {}).get("dir", "") or "")
  if not data_dir:
    return {}
  try:
    from xmae_jax.data import shards
    return shards.read_manifest(data_dir).get("preprocessing", {})
  except Exception:   # the dataset may be gone; the contract above is what loading needs
    return {}


def _save_safetensors(path: Path, flat: dict[str, np.ndarray], info: dict) -> None:
  from safetensors.numpy import save_file
  metadata = {"format": info["format"], "format_version": str(info["format_version"]),
              "model_name": info["model_name"], "modality": info["modality"],
              "package_version": info["package_version"]}
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(path), metadata=metadata)


def _replace_dir(tmp: Path, output: Path) -> None:
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
  lines = [
      f"# {info['model_name']} {info['modality'].upper()} encoder (xmae-jax {info['package_version']})",
      "",
      f"Frozen {info['modality'].upper()} encoder, {info['param_count']:,} parameters, "
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
      "z = enc.embed(x, fs=125)                  # x: (N, L) raw or prepared -> (N, latent)",
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
      "",
      "## Tensors",
      "| name | shape | kind |",
      "|---|---|---|",
  ]
  for name, t in info["tensors"].items():
    lines.append(f"| `{name}` | {tuple(t['shape'])} | {t['kind']} |")
  return "\n".join(lines) + "\n"
