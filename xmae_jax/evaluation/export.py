"""Exported encoder packages: one frozen modality encoder (or, for M2AE, the joint "ppg+ecg"
fingerprint: both modality encoders and the shared bottleneck), self-contained, for downstream
use.

`export_model` / `export_workdir` collect the encoder's tensors and its contract and write them
through xmae_jax.evaluation.package (the format's one home: file names, package.json schema,
safetensors naming, the atomic directory swap). Load a package with `xmae_jax.load_encoder(OUT)`;
see xmae_jax.evaluation.encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from xmae_jax import config_lib
from xmae_jax import errors
from xmae_jax import paths
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import contract as contract_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib


class ExportError(XmaeError):
  """An export that cannot be done as asked (no checkpoint, existing output, no such encoder)."""


def _weights(module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """{name: float32/int array} of the module's variables, and each one's kind."""
  # Orbax (training.checkpoint) takes a while to import; xmae-export --help needs it not.
  from xmae_jax.training import checkpoint

  flat = {k: np.asarray(v) for k, v in checkpoint.flatten(nnx.state(module)).items()}
  params = set(checkpoint.flatten(nnx.state(module, nnx.Param)))
  stats = set(checkpoint.flatten(nnx.state(module, nnx.BatchStat)))
  kinds = {k: "param" if k in params else "batch_stat" if k in stats else "other" for k in flat}
  return flat, kinds


def export_model(
    model,
    config,
    output: str | os.PathLike,
    *,
    modality: str = "ppg",
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
  """Writes the package of `model`'s `modality` encoder (ppg, ecg, or ppg+ecg for M2AE's joint
  fingerprint) to `output`; returns its path."""
  output = check_output(output, overwrite=overwrite)
  module = encoder_module.encoder_module(model, modality)
  module.eval()
  flat, kinds = _weights(module)
  bad = sorted(k for k, v in flat.items() if v.dtype.kind == "f" and not np.isfinite(v).all())
  if bad:  # a package must never embed to NaN
    raise ExportError(
        f"the {modality} encoder holds non-finite weights ({len(bad)} tensors, "
        f"e.g. {bad[0]!r}): refusing to export"
    )
  contract = contract_lib.Contract.from_config(config)
  info = package_lib.package_info(
      model_name=str(config.model.name),
      modality=modality,
      latent_dim=int(config.model.latent_dim),
      param_count=encoder_module.count_parameters(module),
      contract=contract.as_dict(),
      preprocessing=contract_lib.dataset_preprocessing(config),
      source=source,
      tensors=flat,
      kinds=kinds,
      segment_length=contract.segment_length,
  )
  return package_lib.write_package(
      output, flat, info, config_lib.config_to_dict(config), overwrite=overwrite
  )


def check_output(output, *, overwrite: bool = False, workdir=None) -> Path:
  """`output` (absolute) when a package can be written there, checked before any work: only a
  previous package is replaced (`package.check_output`), the folder must be writable, and the
  package must lie apart from the `workdir` it is exported from (neither inside the other: a
  swap there would delete the run)."""
  output = package_lib.check_output(output, overwrite=overwrite)
  if paths.is_remote(output):
    paths.check_writable(output.parent, "encoder package output folder")
    return output
  if workdir is not None and not paths.is_remote(workdir):
    run, out = Path(workdir).resolve(), output.resolve()
    if out == run or run in out.parents or out in run.parents:
      raise ExportError(
          f"output {output} and workdir {workdir} overlap (one is inside the "
          "other): write the package outside the training run"
      )
  errors.check_writable(output.parent, "encoder package output folder", create=False)
  return output


def export_workdir(
    workdir, output, *, modality: str = "ppg", step: str | int = "auto", overwrite: bool = False
) -> Path:
  """The package of a training (or imported) workdir's checkpoint."""
  # Orbax (training.checkpoint) takes a while to import; xmae-export --help needs it not.
  from xmae_jax.training import checkpoint
  from xmae_jax.training import model_checkpoint

  check_output(output, overwrite=overwrite, workdir=workdir)
  try:  # a corrupt checkpoint is skipped for the next candidate, with one line on stderr
    model, config, resolved, m = model_checkpoint.restore_model(workdir, step)
  except checkpoint.CheckpointError as e:
    raise ExportError(str(e)) from None
  source = {
      "workdir": paths.text(paths.absolute(workdir)),
      "step": resolved,
      "requested_step": str(step),
      "checkpoint_kind": m.get("kind"),
      "val_loss": m.get("val_loss"),
      "written_by": m.get("package_version"),
  }
  return export_model(model, config, output, modality=modality, source=source, overwrite=overwrite)
