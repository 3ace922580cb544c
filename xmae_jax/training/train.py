"""The one training loop: `train(config, workdir) -> summary`, for every model and topology.

`train()` reads top to bottom:
  1. check the settings (each bad one fails here with one clear line, `plan.check_settings`);
  2. the mesh, the data streams (each process reads its rows of every global batch);
  3. the model and optimizer state (`training.state`): created directly sharded by the rules in
     `config.mesh.param_rules`, or resumed from the workdir's latest checkpoint;
  4. the loop: step, then what `plan.due()` says the step needs (log, validate, figure,
     checkpoint, stop). `validation.ValidationHistory` owns what follows a validation (best
     step, early stopping, the curriculum) and the loop state stored in checkpoint meta;
     `metric_window.MetricWindow` owns the training metrics between two log rows and the
     NaN/Inf check; `perf.Goodput` books the run's wall time to train steps or to a cause of
     badput (init, compile, data waits, evaluation, checkpointing); `distributed.Preemption`
     turns SIGTERM / Ctrl-C into a saved stop.

Batches reach the step through `prefetch.DevicePrefetch`: the next `train.device_prefetch`
global batches are read and placed on the mesh by a background thread while the step runs, and
the state saved in checkpoints is that of the next batch the step consumes. The steps
(`steps.CompiledSteps`) are compiled ahead of their first call (booked as compile time), which
also gives their FLOPs for MFU. `train.profile_steps=(START, END)` writes a `jax.profiler` trace
of steps START+1..END to WORKDIR/profile/.

Topology independence: global batch i holds the same records whatever the processes (the
pipeline's contract) and the step's randomness is `fold_in(PRNGKey(config.seed), i)`, which the
model splits per example over the GLOBAL batch (threefry is partitionable), so losses do not
depend on the number of processes or devices and a run may resume on another slice size.

Errors: every module raises its own `training.TrainingError` subclass where the problem arises
(a mesh, a checkpoint, a busy workdir); `TrainingError` is reachable here for `train()`'s callers.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import jax

from xmae_jax import config_lib
from xmae_jax import errors
from xmae_jax import models
from xmae_jax import paths
from xmae_jax.data import pipeline
from xmae_jax.training import TrainingError  # raised here, and caught by train()'s callers
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import distributed
from xmae_jax.training import figures
from xmae_jax.training import metric_window
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import model_checkpoint
from xmae_jax.training import optim
from xmae_jax.training import perf
from xmae_jax.training import plan as plan_lib
from xmae_jax.training import prefetch
from xmae_jax.training import run_settings
from xmae_jax.training import sharding
from xmae_jax.training import state as state_lib
from xmae_jax.training import steps as steps_lib
from xmae_jax.training import validation as validation_lib
from xmae_jax.training import workdir_lock

FIGURE_EXAMPLES = 4


def can_plot(config) -> bool:
  """Whether the model draws its own reconstructions (`reconstruct_ecg`)."""
  return hasattr(models.model_class(config.model.name), "reconstruct_ecg")


def _first_batch(val_data):
  batches = iter(val_data)
  try:
    return next(batches)
  finally:
    pipeline.close(batches)


def _draw_figure(
    steps: steps_lib.CompiledSteps, config, workdir: Path, step: int, state, batch, ratio
) -> None:
  got = steps.reconstructions(
      state, batch, ratio, min(FIGURE_EXAMPLES, int(config.train.batch_size))
  )
  if jax.process_index() == 0:
    shown = float(config.masking.ratio_ecg) if ratio is None else ratio
    figures.plot_reconstructions(
        workdir / "figures" / f"reconstruction_step{step:07d}.png",
        got["ecg"],
        got["rec"],
        got["masked"],
        got["ppg"],
        sampling_rate=float(config.data.sampling_rate),
        title=f"{config.model.name} step {step}: ECG from PPG, mask ratio {shown:g}",
    )


def _save(
    ckpt,
    config,
    step: int,
    state,
    validation: validation_lib.ValidationHistory,
    window: metric_window.MetricWindow,
    train_it,
    val_loss=None,
):
  loop = {**validation.state_dict(), "log_window": window.state_dict()}
  meta = ckpt_lib.meta_dict(
      config,
      step,
      val_loss=val_loss,
      loop=loop,
      data_iter_state=train_it.get_state(),
      process_count=jax.process_count(),
      device_count=jax.device_count(),
  )
  ckpt.save(
      step,
      model=state_lib.model_flat(state),
      opt=state_lib.opt_flat(state),
      data_iter=train_it,
      meta=meta,
      val_loss=val_loss,
  )


def _start_from(config, workdir: Path) -> int:
  """train.init_from: another run's weights become checkpoint 0 of this fresh workdir (which
  the resume path below then loads as weights only: new optimizer, data from the start)."""
  if jax.process_count() > 1:
    raise TrainingError(
        "train.init_from takes one process: start the run with one process (it "
        "writes checkpoint 0 at once), stop it, then continue in that workdir"
    )
  used = model_checkpoint.init_from(workdir, config, config.train.init_from)
  print(
      f"xmae-train: weights from {config.train.init_from} (step {used})",
      file=sys.stderr,
      flush=True,
  )
  return 0


def _resume(
    ckpt,
    workdir: Path,
    latest: int,
    abstract,
    state_sh,
    tx,
    train_it,
    validation: validation_lib.ValidationHistory,
):
  """(the train state of checkpoint `latest`, the training metrics of its unfinished log
  window); the data stream and loop state too when it is a training run's (an importer's
  weights-only checkpoint starts the optimizer and data anew)."""
  meta = ckpt.read_meta(latest)
  full = meta.get("kind") == "train" and ckpt.has_item(latest, "opt")
  same_topology = (
      ckpt.has_item(latest, "data_iter")
      and (
          workdir
          / ckpt_lib.CHECKPOINT_DIR
          / str(latest)
          / "data_iter"
          / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      ).is_file()
  )
  state = state_lib.restore_state(
      ckpt,
      latest,
      abstract,
      state_sh,
      tx,
      full=full,
      data_iter=train_it if full and same_topology else None,
  )
  if full:
    if not same_topology:
      # Another process count: this pipeline's iterator state is the global batch index,
      # the same on every process, so process 0's saved state fits every process.
      train_it.set_state(meta["data_iter_state"])
    validation.load_state_dict(meta["loop"])
  return state, (meta.get("loop") or {}).get("log_window") or []


def _announce(
    progress,
    config,
    plan: plan_lib.Plan,
    mesh,
    abstract,
    state_sh,
    start: int,
    workdir,
    peak: perf.Peak | None,
    *,
    restored: bool = False,
) -> None:
  progress.message(
      f"xmae-train: {config.model.name} ({state_lib.num_params(abstract):,} parameters), "
      f"{plan.total_steps} steps of {config.train.batch_size} ({plan.steps_per_epoch} per epoch), "
      f"mesh {dict(mesh.shape)} on {jax.process_count()} process(es), "
      + (
          f"resumed at step {start}"
          if start
          else "from the weights of checkpoint 0 (optimizer and data from the start)"
          if restored
          else "from scratch"
      )
      + f"; workdir {workdir}"
  )
  sharded, leaves = state_lib.param_placement(state_sh)
  if sharded:
    progress.message(f"FSDP-sharded parameters: {sharded} of {leaves}")
  if peak is not None:
    progress.message(peak.describe())


def _last_intact(workdir: Path) -> str:
  steps = ckpt_lib.committed_steps(workdir)
  return (
      f"checkpoint step {steps[-1]} is intact: free space and rerun the same command to resume"
      if steps
      else "no checkpoint had been written"
  )


# ---------------------------------------------------------------------------------- training


def train(
    config, workdir, *, stop_at_step: int | None = None, allow_changes: tuple[str, ...] = ()
) -> dict:
  """Trains `config` in `workdir` (resuming from its newest intact checkpoint when it holds one;
  refused with one line while another run holds the workdir, or when the run there had other
  `run_settings.RUN_SETTINGS` than those named in `allow_changes`); returns a summary.

  `stop_at_step`: save and stop after this step (staged jobs and tests); the run continues
  from there when started again. A workdir that cannot take files fails before any work, and a
  write the storage refuses later (a full disk) ends the run with one line naming the file;
  the checkpoints written before it stay intact.
  """
  workdir = paths.path(workdir)
  try:
    paths.check_writable(workdir, "workdir")
  except errors.XmaeError as e:  # the shared check's error, as the trainer's
    raise TrainingError(str(e)) from None
  try:
    with contextlib.ExitStack() as held:  # the workdir lock, released however train ends
      return _train(config, workdir, stop_at_step, tuple(allow_changes), held)
  except ckpt_lib.CheckpointWriteError as e:
    raise ckpt_lib.CheckpointWriteError(f"{e}; {_last_intact(workdir)}") from None
  except errors.XmaeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # only refused writes are replaced
    reason = errors.storage_reason(e)
    if reason is None:
      raise
    where = getattr(e, "filename", None) or workdir  # metrics, config, TensorBoard, figures
    raise TrainingError(
        f"{where} could not be written: {reason}; {_last_intact(workdir)}"
    ) from None


def _train(
    config,
    workdir: Path,
    stop_at_step: int | None,
    allow_changes: tuple[str, ...],
    held: contextlib.ExitStack,
) -> dict:
  goodput = perf.Goodput()
  chief = jax.process_index() == 0
  t = config.train

  # 1-2. settings, mesh, data
  mesh = sharding.make_mesh(config.mesh)
  train_records = plan_lib.check_settings(config, mesh)
  held.enter_context(workdir_lock.acquire(workdir))
  latest = run_settings.check_compatible(workdir, config, resume=True, allow_changes=allow_changes)
  if latest is None and t.init_from:
    latest = _start_from(config, workdir)
  plan = plan_lib.make_plan(config, train_records)
  rows = sharding.host_rows(mesh, t.batch_size, sharding.batch_axes(mesh, config.mesh))
  train_it = pipeline.make_train_iterator(
      config.data, global_batch_size=t.batch_size, seed=int(config.seed), rows=rows
  )
  # Built once: shards opened and the selection resolved here, read again at each evaluation
  # (not kept in memory: a real validation split can be gigabytes).
  val_data = pipeline.make_eval_dataset(
      config.data,
      global_batch_size=t.batch_size,
      num_batches=plan.eval_batches,
      rows=rows,
      num_workers=0,
      cache=False,
  )

  # 3. model, optimizer, shardings; fresh or resumed
  tx, schedule = optim.make_optimizer(t, plan.total_steps)
  init = state_lib.init_fn(config, tx, mesh)
  abstract = jax.eval_shape(init)
  state_sh = state_lib.state_shardings(abstract, mesh, config)
  steps = steps_lib.CompiledSteps(
      config, mesh, state_lib.model_graphdef(config), tx, schedule, state_sh, goodput
  )
  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(t.keep_checkpoints))
  validation = validation_lib.ValidationHistory.from_config(config)
  with jax.set_mesh(mesh):
    fallback, log_window = None, []
    if latest is None:
      state = state_lib.host_init(init, state_sh)
    else:
      latest, (state, log_window), fallback = ckpt_lib.restore_newest_intact(  # newest intact
          ckpt,
          [s for s in ckpt.all_steps()[::-1] if s <= latest],
          lambda s: _resume(ckpt, workdir, s, abstract, state_sh, tx, train_it, validation),
      )
      # Newer ones are corrupt: moved out of the way, this run writes those steps again.
      ckpt.set_aside([s for s in ckpt.all_steps() if s > latest])
    # From here on the loop takes placed batches, read ahead while the step runs.
    batches = prefetch.DevicePrefetch(train_it, steps.to_device, int(t.device_prefetch))
    step = start = int(jax.device_get(state["step"]))
    if chief:
      config_lib.write_config(workdir, config)
      metrics_lib.truncate_after(workdir, start)
    writer = metrics_lib.MetricsWriter(workdir, active=chief, config=config)
    progress = metrics_lib.Progress(plan.total_steps, start, active=chief)
    # Only process 0 logs, so only it needs the MFU denominator (measured on CPU).
    peak = perf.device_peak(jax.local_devices()[0], str(t.compute_dtype)) if chief else None
    _announce(
        progress,
        config,
        plan,
        mesh,
        abstract,
        state_sh,
        start,
        workdir,
        peak,
        restored=latest is not None,
    )
    if fallback:
      progress.message(
          f"xmae-train: {fallback}; newer ones moved to {workdir / ckpt_lib.CORRUPT_DIR}"
      )

    # 4. the loop
    preemption = distributed.Preemption()
    window = metric_window.MetricWindow(
        int(t.batch_size), plan.steps_per_epoch, workdir, goodput, peak
    )
    window.load_state_dict(log_window)
    profile = perf.ProfileWindow(plan.profile, workdir / "profile", active=chief)
    status = "completed"
    last_saved = latest if latest is not None and start > 0 else None
    goodput.end_init()
    try:
      while step < plan.total_steps:
        if preemption.reached(step):
          status = "preempted"
          break
        ratio = validation.mask_ratio
        with goodput.phase("data"):
          batch = next(batches)
        with goodput.phase("other"):
          profile.before(step)
        with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
          state, out = steps.train(ratio, state, batch)(state, batch)
        step += 1
        with goodput.phase("other"):
          profile.after(step, out)
        now = plan_lib.due(plan, step, stop_at_step)
        window.push(step, out, sync=now.sync, last_saved=last_saved)
        row = window.row(step, ratio, steps.flops.get(ratio)) if now.log else None
        val_loss = None
        if now.eval:
          with goodput.phase("eval"):
            val = steps.evaluate(state, iter(val_data), ratio)
          val_loss = val.pop("loss")
          row = {**(row or {}), "val_loss": val_loss, **{f"val_{k}": v for k, v in val.items()}}
          for message in validation.record(step, val_loss):
            progress.message(message)
        if now.figure and can_plot(config):
          with goodput.phase("eval"):
            _draw_figure(
                steps, config, workdir, step, state, _first_batch(val_data), validation.mask_ratio
            )
        stop_early = now.eval and validation.should_stop()
        # The row before the checkpoint: a step saved is a step logged (a resume drops the rows
        # after its checkpoint and logs them again, so a row that could not be written is not
        # lost; one missing behind a saved checkpoint would be).
        if row is not None:
          row.update(goodput.shares())
          writer.write(step, row)
          progress.update(step, loss=row.get("train_loss", float("nan")), lr=row.get("lr", 0.0))
        if now.checkpoint or (now.eval and validation.best_step == step) or stop_early:
          with goodput.phase("checkpoint"):
            _save(ckpt, config, step, state, validation, window, batches, val_loss)
          last_saved = step
        if stop_early:
          status = "early_stopped"
          progress.message(
              f"step {step}: early stop, no val_loss improvement in "
              f"{validation.evals_since_best} evaluations"
          )
          break
        if now.stop:
          status = "stopped"
          break
        if now.log or now.eval:
          window.restart_clock()
      if status == "preempted":
        if last_saved != step:
          window.settle(last_saved)
          _save(ckpt, config, step, state, validation, window, batches)
          last_saved = step
        progress.message(
            f"step {step}: stopped by {preemption.signal}; checkpoint saved, rerun "
            "the same command to resume"
        )
    finally:
      with contextlib.ExitStack() as closing:  # each one closed even when another fails
        for close in (
            lambda: pipeline.close(batches),
            ckpt.close,
            writer.close,
            progress.close,
            preemption.close,
            profile.close,
        ):
          closing.callback(close)
  return {
      "status": status,
      "signal": preemption.signal,
      "step": step,
      "total_steps": plan.total_steps,
      "best_val_loss": validation.best_val_loss,
      "best_step": validation.best_step,
      "last_val_loss": validation.last_val_loss,
      "last_checkpoint": last_saved,
      "workdir": str(workdir),
  }


def describe(summary: dict) -> str:
  """One line for the user from `train()`'s summary: how the run ended, where, its best step."""
  best = summary["best_val_loss"]
  return (
      f"{summary['status']} at step {summary['step']}/{summary['total_steps']}"
      + (f", best val_loss {best:.5f} (step {summary['best_step']})" if best is not None else "")
      + f"; workdir {summary['workdir']}"
  )
