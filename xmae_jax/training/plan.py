"""What a training run will do: its settings checked, its step counts, and each step's duties.

`check_settings` fails with one line on a setting that cannot work (before anything is built);
`make_plan` derives the run's step counts from the config and the data once; `due(plan, step)`
says what a finished step needs (log, validate, draw, checkpoint, stop).
"""

from __future__ import annotations

import dataclasses

from xmae_jax import config_rules
from xmae_jax import models
from xmae_jax import training
from xmae_jax.data import pipeline
from xmae_jax.data import shards
from xmae_jax.models import layers
from xmae_jax.training import sharding


@dataclasses.dataclass
class Plan:
  """What the run will do, derived once from the config and the data."""

  total_steps: int
  steps_per_epoch: int
  eval_every: int
  eval_batches: int | None
  figure_every: int
  log_every: int
  checkpoint_every: int
  profile: tuple[int, int] | None  # (START, END): trace steps START+1..END


def make_plan(config, train_records: int) -> Plan:
  t = config.train
  steps_per_epoch = max(1, train_records // t.batch_size)
  total = int(t.num_steps) if t.num_steps else int(t.num_epochs) * steps_per_epoch
  if total <= 0:
    raise training.TrainingError(
        f"train.num_steps={t.num_steps} and " f"train.num_epochs={t.num_epochs}: nothing to train"
    )
  if total > config_rules.MAX_STEPS:
    raise training.TrainingError(
        f"train.num_epochs={t.num_epochs} x {steps_per_epoch} steps per epoch = {total} steps: "
        f"more than the 32-bit step counter holds ({config_rules.MAX_STEPS})"
    )
  eval_every = int(t.eval_every) or steps_per_epoch
  figure_every = int(t.figure_every) or 3 * eval_every
  profile = tuple(int(v) for v in t.profile_steps or ()) or None
  if profile is not None and profile[1] > total:
    raise training.TrainingError(
        f"train.profile_steps={profile}: END is past the run's last step {total}"
    )
  return Plan(
      total_steps=total,
      steps_per_epoch=steps_per_epoch,
      eval_every=eval_every,
      eval_batches=int(t.eval_batches) or None,
      figure_every=figure_every,
      log_every=max(1, int(t.log_every)),
      checkpoint_every=int(t.checkpoint_every) or total,
      profile=profile,
  )


def check_settings(config, mesh) -> int:
  """Fails with one line on a setting that cannot work; returns the usable training records.

  The model registry and the dataset raise their own errors; here they become the trainer's
  (`TrainingError`), which its callers catch."""
  t = config.train
  try:
    models.model_class(config.model.name)
  except models.UnknownModelError as e:
    raise training.TrainingError(str(e)) from None
  dp = sharding.data_parallel_size(mesh, config.mesh)
  accum = max(1, int(t.grad_accum_steps))
  if t.batch_size <= 0 or t.batch_size % dp:
    raise training.TrainingError(
        f"global batch size train.batch_size={t.batch_size} is not divisible by the "
        f"data-parallel size {dp} (mesh {dict(mesh.shape)})"
    )
  if t.batch_size % (dp * accum):
    raise training.TrainingError(
        f"train.batch_size={t.batch_size} is not divisible by data-parallel size {dp} x "
        f"train.grad_accum_steps={accum}"
    )
  if t.compute_dtype not in layers.COMPUTE_DTYPES:
    raise training.TrainingError(
        f"train.compute_dtype={t.compute_dtype!r}: choose one of "
        f"{', '.join(layers.COMPUTE_DTYPES)}"
    )
  try:
    records = pipeline.count_records(config.data, "train")
    pipeline.count_records(config.data, "validation")
  except shards.DatasetError as e:
    raise training.TrainingError(str(e)) from None
  if records < t.batch_size:
    raise training.TrainingError(
        f"{config.data.dir}: {records} usable training records, fewer "
        f"than one global batch of {t.batch_size}"
    )
  return records


@dataclasses.dataclass(frozen=True)
class Due:
  """What a finished step needs."""

  log: bool
  eval: bool
  figure: bool
  checkpoint: bool  # periodic, last or requested stop (best and early stop add to it later)
  stop: bool  # `stop_at_step` reached

  @property
  def sync(self) -> bool:
    """The step's metrics are needed now (not one step later)."""
    return self.log or self.eval or self.checkpoint


def due(plan: Plan, step: int, stop_at_step: int | None) -> Due:
  last = step == plan.total_steps
  stop = step == stop_at_step
  return Due(
      log=step % plan.log_every == 0 or last,
      eval=step % plan.eval_every == 0 or last,
      figure=step % plan.figure_every == 0,
      checkpoint=step % plan.checkpoint_every == 0 or last or stop,
      stop=stop,
  )
