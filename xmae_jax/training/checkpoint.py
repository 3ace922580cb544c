"""Checkpoints of a run: an Orbax CheckpointManager over WORKDIR/checkpoints/<step>/.

Each step directory holds, saved together and atomically (Orbax writes to a temporary directory
and renames it when every process has finished):
  model/      every variable of the NNX model (parameters and BatchNorm statistics),
              a flat {dotted path: array} map, so other tools read it without the model class
  opt/        the optax state, the same way (absent in checkpoints written by importers)
  data_iter/  the Grain iterator state, one JSON per process (absent when the stream has none)
  meta/       JSON: model name, the full config, step, validation loss, curriculum and
              early-stopping state, and the package version
Saving is asynchronous (the training loop continues while files are written). The manager keeps
the latest `keep` checkpoints and the one with the lowest validation loss.

Other tools use `load_model(workdir, step="latest"|"best"|N) -> (model in eval mode, config)` and
`write_model_checkpoint(workdir, model, config, step=0)` (the PyTorch importer).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from xmae_jax import __version__
from xmae_jax import errors
# The config JSON round trip lives in config_lib; these names stay reachable here for callers.
from xmae_jax.config_lib import config_from_dict, config_to_dict, write_config  # noqa: F401

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
ITEMS = ("model", "opt", "data_iter", "meta")


class CheckpointError(errors.XmaeError):
  """A workdir or checkpoint that cannot be used as asked."""


# --- Flat, framework-neutral views of state trees ------------------------------------------------

def _key(path) -> str:
  s = jax.tree_util.keystr(path, simple=True, separator=".")
  return s[:-len(".value")] if s.endswith(".value") else s


def flatten(tree) -> dict[str, Any]:
  """{dotted path: leaf}: the names a checkpoint stores (NNX's trailing `.value` dropped, so an
  `nnx.State` and its pure dict give the same names)."""
  return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(like, flat: dict[str, Any]):
  """The tree `like` with its leaves taken from `flat`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  missing = [_key(p) for p, _ in paths if _key(p) not in flat]
  if missing:
    raise CheckpointError(f"checkpoint lacks {len(missing)} entries the model needs, e.g. {missing[:3]}")
  return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in paths])


def abstract_of(flat: dict[str, Any], shardings: dict[str, Any] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs (with the target shardings) to restore `flat` into."""
  out = {}
  for k, v in flat.items():
    sharding = (shardings or {}).get(k, getattr(v, "sharding", None))
    out[k] = jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
  return out


# --- The manager ---------------------------------------------------------------------------------

def _val_metric(metrics) -> float:
  # BestN keeps the last n after an ascending sort; negate so the lowest loss sorts last.
  return -float(metrics["val_loss"])


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for this project's items."""

  def __init__(self, workdir, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(max(1, int(keep))),
        policies.BestN(get_metric_fn=_val_metric, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"{Path(workdir)} has no {CHECKPOINT_DIR}/ directory")
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def read_meta(self, step: int) -> dict:
    path = self.directory / str(step) / "meta" / "metadata"
    if not path.is_file():
      raise CheckpointError(f"checkpoint {self.directory / str(step)} has no meta")
    return json.loads(path.read_text())

  def best_step(self) -> int | None:
    """The step with the lowest recorded validation loss (None when no checkpoint has one)."""
    scored = []
    for s in self.all_steps():
      v = self.read_meta(s).get("val_loss")
      if isinstance(v, (int, float)) and math.isfinite(v):
        scored.append((v, s))
    return min(scored)[1] if scored else None

  def resolve(self, step: str | int) -> int:
    """'latest' | 'best' | N -> an existing step (clear error otherwise)."""
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoints under {self.directory}")
    if step == "latest":
      return steps[-1]
    if step == "best":
      best = self.best_step()
      if best is None:
        raise CheckpointError(f"no checkpoint under {self.directory} has a validation loss")
      return best
    try:
      n = int(step)
    except (TypeError, ValueError):
      raise CheckpointError(f"step {step!r}: expected 'latest', 'best' or a number") from None
    if n not in steps:
      raise CheckpointError(f"no checkpoint for step {n} under {self.directory} (have {steps})")
    return n

  def has_item(self, step: int, item: str) -> bool:
    return (self.directory / str(step) / item).is_dir()

  def save(self, step: int, *, model: dict, meta: dict, opt: dict | None = None,
           data_iter=None, val_loss: float | None = None, force: bool = True) -> bool:
    """Starts an (async) save of the given items; every process must call it."""
    args = {"model": ocp.args.StandardSave(model), "meta": ocp.args.JsonSave(meta)}
    if opt is not None:
      args["opt"] = ocp.args.StandardSave(opt)
    if data_iter is not None:
      import grain  # only the training stream needs the Grain handler
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    metrics = {"val_loss": float(val_loss)} if val_loss is not None and math.isfinite(val_loss) else None
    return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=force)

  def restore(self, step: int, *, model: dict, opt: dict | None = None, data_iter=None) -> dict:
    """Restores the named items into the abstract targets given (shardings taken from them)."""
    args = {"model": ocp.args.StandardRestore(model), "meta": ocp.args.JsonRestore()}
    if opt is not None:
      args["opt"] = ocp.args.StandardRestore(opt)
    if data_iter is not None:
      import grain
      args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    return dict(self.manager.restore(step, args=ocp.args.Composite(**args)).items())

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def meta_dict(config, step: int, *, kind: str = "train", **extra) -> dict:
  return {"format": FORMAT_VERSION, "kind": kind, "model_name": str(config.model.name),
          "config": config_to_dict(config), "step": int(step), "package_version": __version__,
          **extra}


def check_compatible(workdir, config) -> int | None:
  """Latest step of an existing run in `workdir` (None if fresh); a clear error if it is another
  model or another model configuration (restoring it would fail or mislead)."""
  directory = Path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    return None
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "meta").is_dir())
  if not steps:
    return None
  meta = json.loads((directory / str(steps[-1]) / "meta" / "metadata").read_text())
  name = meta.get("model_name")
  if name != config.model.name:
    raise CheckpointError(f"workdir {workdir} holds a checkpoint of model {name!r} (step {steps[-1]}), "
                          f"not {config.model.name!r}: use another --workdir")
  saved = meta.get("config", {}).get("model", {})
  wanted = config_to_dict(config)["model"]
  diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
  if diff:
    k = diff[0]
    raise CheckpointError(f"workdir {workdir} holds a {name} checkpoint with other model settings "
                          f"(model.{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here): use another --workdir")
  return steps[-1]


# --- Model-only entry points for other tools -----------------------------------------------------

def abstract_model(config):
  """(graphdef, abstract state) of the model `config` names, without allocating parameters."""
  from flax import nnx
  from xmae_jax import models
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(int(config.get("seed", 0)))))
  return nnx.split(model)


def load_model(workdir, step: str | int = "latest"):
  """(model in eval mode, config) from a run's or an importer's checkpoint.

  Parameters land on the default device, replicated (the models are small); use the trainer's
  restore path for sharded training state.
  """
  from flax import nnx
  ckpt = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    step = ckpt.resolve(step)
    meta = ckpt.read_meta(step)
    config = config_from_dict(meta["config"])
    graphdef, abstract = abstract_model(config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = abstract_of(flatten(abstract), {k: device for k in flatten(abstract)})
    restored = ckpt.restore(step, model=target)
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, unflatten(abstract, restored["model"]))
  model.eval()
  return model, config


def write_model_checkpoint(workdir, model, config, step: int = 0) -> Path:
  """Writes `model`'s variables as checkpoint `step` of `workdir` (no optimizer or data state),
  plus WORKDIR/config.json. `load_model` and the trainer (as initial weights) read it back."""
  from flax import nnx
  check_compatible(workdir, config)
  write_config(workdir, config)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(step, model=flatten(nnx.state(model)), meta=meta_dict(config, step, kind="model"))
    ckpt.wait()
  finally:
    ckpt.close()
  return ckpt.directory / str(step)
