"""Checkpoints of a run: an Orbax CheckpointManager over WORKDIR/checkpoints/<step>/.

Each step directory holds, saved together and atomically (Orbax writes to a temporary directory
and renames it when every process has finished):
  model/      every variable of the NNX model (parameters and BatchNorm statistics),
              a flat {dotted path: array} map, so other tools read it without the model class
  opt/        the optax state, the same way (absent in checkpoints written by importers)
  data_iter/  the Grain iterator state, one JSON per process (absent when the stream has none)
  meta/       JSON: model name, the full config, step, validation loss, curriculum and
              early-stopping state, the package version, the items saved and a digest of every
              saved array (`digests`)
Saving is asynchronous (the training loop continues while files are written). The manager keeps
the latest `keep` checkpoints and the one with the lowest validation loss.

Integrity: every restore recomputes the digest of each restored array and compares it with the
one saved in meta (`checkpoint_integrity`); a mismatch, a missing item, an unreadable meta or any
failure of the restore itself is a `CorruptCheckpointError` naming the checkpoint, on every
process. `restore_newest_intact` walks the candidates (newest first for "latest") past corrupt
ones and says which were skipped, in one line; all processes fall back to the same step.

A run's settings (`run_settings.check_compatible`) are checked against the newest checkpoint's
meta. Loading a model for evaluation or writing an importer's checkpoint: `model_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import Any, Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from xmae_jax import config_lib
from xmae_jax import errors
from xmae_jax import paths
from xmae_jax import training
from xmae_jax.training import checkpoint_integrity as integrity
from xmae_jax.training import orbax_quiet
from xmae_jax.version import __version__

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"  # corrupt checkpoints a resumed run moved out of its way
FORMAT_VERSION = 1
ITEMS = ("model", "opt", "data_iter", "meta")


class CheckpointError(training.TrainingError):
  """A workdir or checkpoint that cannot be used as asked."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint whose files are damaged or incomplete (callers fall back to an older one)."""


class CheckpointWriteError(CheckpointError):
  """The storage refused a checkpoint (full disk, read-only); the earlier ones are intact."""


# --- Flat, framework-neutral views of state trees ------------------------------------------------


def _key(path) -> str:
  s = jax.tree_util.keystr(path, simple=True, separator=".")
  return s[: -len(".value")] if s.endswith(".value") else s


def flatten(tree) -> dict[str, Any]:
  """{dotted path: leaf}: the names a checkpoint stores (NNX's trailing `.value` dropped, so an
  `nnx.State` and its pure dict give the same names)."""
  return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(like, flat: dict[str, Any]):
  """The tree `like` with its leaves taken from `flat`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  missing = [_key(p) for p, _ in paths if _key(p) not in flat]
  if missing:
    raise CheckpointError(
        f"checkpoint lacks {len(missing)} entries the model needs, " f"e.g. {missing[:3]}"
    )
  return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in paths])


def abstract_of(
    flat: dict[str, Any], shardings: dict[str, Any] | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
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
    self.directory = paths.absolute(workdir) / CHECKPOINT_DIR
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(max(1, int(keep))),
            policies.BestN(get_metric_fn=_val_metric, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"{paths.text(workdir)} has no {CHECKPOINT_DIR}/ directory")
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
    self.saving: int | None = None  # the step of the save in flight (async)
    # once: a filter is a set member
    logging.getLogger("absl").addFilter(orbax_quiet.QUIET_STORAGE_ERRORS)
    orbax_quiet.quiet_late_write_callbacks()

  @contextlib.contextmanager
  def _storage(self):
    """A refused write of the save in flight, as one CheckpointWriteError naming its step."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore wrap the OSError
      reason = errors.storage_reason(e)
      if reason is None or self.saving is None:
        raise
      raise CheckpointWriteError(
          f"checkpoint {self.directory / str(self.saving)} could not be " f"written: {reason}"
      ) from None

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def read_meta(self, step: int) -> dict:
    path = self.directory / str(step) / "meta" / "metadata"
    if not path.is_file():
      raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} has no meta")
    try:
      meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CorruptCheckpointError(
          f"checkpoint meta {path} cannot be read ({orbax_quiet.one_line(e)})"
      ) from None
    if not isinstance(meta, dict):
      raise CorruptCheckpointError(f"checkpoint meta {path} is not a JSON object")
    return meta

  def scored_steps(self) -> list[int]:
    """Steps with a recorded validation loss, lowest loss first (unreadable metas left out)."""
    scored = []
    for s in self.all_steps():
      try:
        v = self.read_meta(s).get("val_loss")
      except CorruptCheckpointError:
        continue
      if isinstance(v, (int, float)) and math.isfinite(v):
        scored.append((v, s))
    return [s for _, s in sorted(scored)]

  def best_step(self) -> int | None:
    """The step with the lowest recorded validation loss (None when no checkpoint has one)."""
    scored = self.scored_steps()
    return scored[0] if scored else None

  def candidates(self, step: str | int) -> list[int]:
    """The steps to try for `step`, in order: 'latest' newest first, 'best' lowest validation
    loss first, 'auto' = 'best' when a checkpoint has a validation loss else 'latest', N only N."""
    if step == "auto":
      step = "best" if self.scored_steps() else "latest"
    if step == "latest":
      self.resolve(step)  # the error for an empty directory
      return self.all_steps()[::-1]
    if step == "best":
      self.resolve(step)
      return self.scored_steps()
    return [self.resolve(step)]

  def check_items(self, step: int) -> dict:
    """The meta of `step`, after checking that the items it was saved with are all there (a
    training checkpoint without its optimizer state would silently restart the optimizer)."""
    meta = self.read_meta(step)
    saved = meta.get("items") or (["model", "opt"] if meta.get("kind") == "train" else ["model"])
    missing = [item for item in saved if not self.has_item(step, item)]
    if missing:
      raise CorruptCheckpointError(
          f"checkpoint {self.directory / str(step)} lacks its " f"{', '.join(missing)} item(s)"
      )
    return meta

  def verify(self, step: int, restored: dict) -> None:
    """Raises CorruptCheckpointError unless every restored array has the digest saved with it
    (checkpoints written before digests existed pass). Every process must call it."""
    bad = integrity.first_difference(restored, (restored.get("meta") or {}).get("digests") or {})
    if not integrity.all_processes(bad is None):
      raise CorruptCheckpointError(
          f"checkpoint {self.directory / str(step)} is corrupt: "
          + (f"{bad} differs from what was saved" if bad else "an array differs on another process")
      )

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

  def save(
      self,
      step: int,
      *,
      model: dict,
      meta: dict,
      opt: dict | None = None,
      data_iter=None,
      val_loss: float | None = None,
      force: bool = True,
  ) -> bool:
    """Starts an (async) save of the given items; every process must call it."""
    args = {"model": ocp.args.StandardSave(model)}
    if opt is not None:
      args["opt"] = ocp.args.StandardSave(opt)
    if data_iter is not None:
      import grain  # only the training stream needs the Grain handler

      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    meta = {
        **meta,
        "items": sorted([*args, "meta"]),
        "digests": {
            "model": integrity.digests(model),
            **({"opt": integrity.digests(opt)} if opt is not None else {}),
        },
    }
    args["meta"] = ocp.args.JsonSave(meta)
    scored = val_loss is not None and math.isfinite(val_loss)
    metrics = {"val_loss": float(val_loss)} if scored else None
    with self._storage():  # a refused earlier save surfaces here, named by its step
      self.manager.wait_until_finished()
    self.saving = step
    with self._storage():
      return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=force)

  def restore(self, step: int, *, model: dict, opt: dict | None = None, data_iter=None) -> dict:
    """Restores the named items into the abstract targets given (shardings taken from them) and
    verifies them (`verify`); a damaged checkpoint raises CorruptCheckpointError on every
    process. Every process must call it."""
    args = {"model": ocp.args.StandardRestore(model), "meta": ocp.args.JsonRestore()}
    if opt is not None:
      args["opt"] = ocp.args.StandardRestore(opt)
    if data_iter is not None:
      # Grain is in the train extra: loading a model (no iterator) works without it.
      import grain

      args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    error = None
    try:
      restored = dict(self.manager.restore(step, args=ocp.args.Composite(**args)).items())
    except Exception as e:  # pylint: disable=broad-except  # whatever damaged files raise
      error = (
          f"checkpoint {self.directory / str(step)} cannot be read " f"({orbax_quiet.one_line(e)})"
      )
      restored = {}
    if error:
      orbax_quiet.collect_abandoned_reads()
      integrity.rejoin_restore_barrier()
    if not integrity.all_processes(error is None):
      raise CorruptCheckpointError(
          error or f"checkpoint {self.directory / str(step)} cannot be read on another process"
      )
    self.verify(step, restored)
    return restored

  def set_aside(self, steps) -> None:
    """Moves the checkpoints `steps` to WORKDIR/checkpoints_corrupt/ (kept for inspection) so a
    resumed run can write those steps again. Every process must call it."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory.parent / CORRUPT_DIR
      aside.mkdir(exist_ok=True)
      for s in steps:
        target, n = aside / str(s), 1
        while target.exists():
          target, n = aside / f"{s}.{n}", n + 1
        (self.directory / str(s)).replace(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("xmae_jax checkpoint set_aside")
    self.manager.reload()

  def wait(self) -> None:
    with self._storage():
      self.manager.wait_until_finished()
    self.saving = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


def meta_dict(config, step: int, *, kind: str = "train", **extra) -> dict:
  return {
      "format": FORMAT_VERSION,
      "kind": kind,
      "model_name": str(config.model.name),
      "config": config_lib.config_to_dict(config),
      "step": int(step),
      "package_version": __version__,
      **extra,
  }


T = TypeVar("T")


def restore_newest_intact(
    ckpt: Checkpointer, candidates: list[int], restore: Callable[[int], T]
) -> tuple[int, T, str | None]:
  """(step, restore(step), note) for the first of `candidates` that is intact.

  A candidate whose items are missing, whose meta cannot be read or whose `restore` raises
  CorruptCheckpointError is skipped; `note` is then one line naming the skipped checkpoints and
  the one used (None when the first was intact). When none is intact: one CheckpointError line.
  Every process must call it; they all take the same step.
  """
  skipped = []
  for step in candidates:
    try:
      error = None
      try:
        ckpt.check_items(step)
      except CorruptCheckpointError as e:
        error = str(e)
      if not integrity.all_processes(error is None):
        raise CorruptCheckpointError(
            error or f"checkpoint step {step} is incomplete on another process"
        )
      result = restore(step)
    except CorruptCheckpointError as e:
      skipped.append(f"step {step}: {e}")
      continue
    note = None
    if skipped:
      note = (
          f"skipped {len(skipped)} corrupt checkpoint(s) ({'; '.join(skipped)}); "
          f"using step {step}, the newest intact one"
      )
    return step, result, note
  raise CheckpointError(
      f"no intact checkpoint under {ckpt.directory}: {'; '.join(skipped)}"
      if skipped
      else f"no checkpoints under {ckpt.directory}"
  )


def committed_steps(workdir) -> list[int]:
  """The steps under WORKDIR/checkpoints that Orbax committed (it renames a checkpoint's
  temporary folder to the bare step number once every process has written its part), read from
  the folder alone: a manager would wait for a lost process."""
  directory = paths.path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
