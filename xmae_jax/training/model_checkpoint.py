"""A model's weights as a checkpoint, for the tools around training.

`load_model(workdir, step="latest"|"best"|"auto"|N) -> (model in eval mode, config)` is how
evaluation and export read a run (`restore_model` also returns the step used and its meta);
`write_model_checkpoint(workdir, model, config, step=0)` is how an importer (PyTorch weights)
writes one; `init_from` starts a training run from another run's weights. These checkpoints are
the trainer's own format (`checkpoint.Checkpointer`), with only the `model` and `meta` items.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import jax
from flax import nnx

from xmae_jax import config_lib
from xmae_jax import models
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import orbax_quiet
from xmae_jax.training import run_settings


def abstract_model(config):
  """(graphdef, abstract state) of the model `config` names, without allocating parameters."""
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(int(config.get("seed", 0)))))
  return nnx.split(model)


def _stderr(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def restore_model(workdir, step: str | int = "latest", *, log: Callable[[str], None] = _stderr):
  """(model in eval mode, config, step used, its meta) from a run's or an importer's checkpoint.

  `step`: 'latest' | 'best' | 'auto' | N (see `Checkpointer.candidates`). A corrupt checkpoint
  is skipped for the next candidate, and `log` gets one line saying so; an explicit N is not
  replaced. Parameters land on the default device, replicated (the models are small); use the
  trainer's restore path for sharded training state.
  """
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True, async_save=False)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore(s: int):
    meta = ckpt.read_meta(s)
    try:
      config = config_lib.config_from_dict(meta["config"])
    except Exception as e:  # pylint: disable=broad-except  # a damaged meta's config
      raise ckpt_lib.CorruptCheckpointError(
          f"checkpoint {ckpt.directory / str(s)} has an unusable config "
          f"({orbax_quiet.one_line(e)})"
      ) from None
    graphdef, abstract = abstract_model(config)
    flat = ckpt_lib.flatten(abstract)
    target = ckpt_lib.abstract_of(flat, {k: device for k in flat})
    restored = ckpt.restore(s, model=target)
    return nnx.merge(graphdef, ckpt_lib.unflatten(abstract, restored["model"])), config, meta

  try:
    used, (model, config, meta), note = ckpt_lib.restore_newest_intact(
        ckpt, ckpt.candidates(step), restore
    )
  finally:
    ckpt.close()
  if note:
    log(f"xmae: {note}")
  model.eval()
  return model, config, used, meta


def load_model(workdir, step: str | int = "latest"):
  """(model in eval mode, config): `restore_model` without the step and meta."""
  model, config, _, _ = restore_model(workdir, step)
  return model, config


def init_from(
    workdir, config, source, *, step: str | int = "auto", log: Callable[[str], None] = _stderr
) -> int:
  """Writes the weights of run `source` (its `step`: 'auto' = best validation, else latest) as
  checkpoint 0 of the fresh `workdir`, where training `config` then starts from them with a
  new optimizer and data stream. Another model or other model settings raise CheckpointError
  naming the first differing key. Returns the source step used."""
  model, source_config, used, _ = restore_model(source, step, log=log)
  if source_config.model.name != config.model.name:
    raise ckpt_lib.CheckpointError(
        f"train.init_from {source}: a {source_config.model.name} "
        f"checkpoint, not {config.model.name}"
    )
  other = run_settings.setting_difference(
      config_lib.config_to_dict(source_config), config, ("model",)
  )
  if other:
    raise ckpt_lib.CheckpointError(f"train.init_from {source}: other model settings ({other[1]})")
  write_model_checkpoint(workdir, model, config, step=0)
  return used


def write_model_checkpoint(workdir, model, config, step: int = 0) -> Path:
  """Writes `model`'s variables as checkpoint `step` of `workdir` (no optimizer or data state),
  plus WORKDIR/config.json. `load_model` and the trainer (as initial weights) read it back."""
  run_settings.check_compatible(workdir, config)
  config_lib.write_config(workdir, config)
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(
        step,
        model=ckpt_lib.flatten(nnx.state(model)),
        meta=ckpt_lib.meta_dict(config, step, kind="model"),
    )
    ckpt.wait()
  finally:
    ckpt.close()
  return ckpt.directory / str(step)
