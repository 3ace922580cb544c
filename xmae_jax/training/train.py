"""The one training loop: `train(config, workdir) -> summary`, for every model and topology.

`train()` reads top to bottom:
  1. check the settings (each bad one fails here with one clear line);
  2. the mesh, the data streams (each process reads its rows of every global batch);
  3. the model and optimizer state (`training.state`): created directly sharded by the rules in
     `config.mesh.param_rules`, or resumed from the workdir's latest checkpoint;
  4. the loop: step, then what `due()` says the step needs (log, validate, figure, checkpoint,
     stop). `Validation` owns what follows a validation (best step, early stopping, the
     curriculum) and the loop state stored in checkpoint meta; `MetricWindow` owns the training
     metrics between two log rows (loss parts, step time, segments/s, TFLOP/s per device, MFU)
     and the NaN/Inf check; `perf.Goodput` books the run's wall time to train steps or to a
     cause of badput (init, compile, data waits, evaluation, checkpointing).

Batches reach the step through `prefetch.DevicePrefetch`: the next `train.device_prefetch`
global batches are read and placed on the mesh by a background thread while the step runs, and
the state saved in checkpoints is that of the next batch the step consumes. The train step is
compiled ahead of its first call (`lower().compile()`, booked as compile time), which also
gives its FLOPs (`cost_analysis`) for MFU. `train.profile_steps=(START, END)` writes a
`jax.profiler` trace of steps START+1..END to WORKDIR/profile/.

Topology independence: global batch i holds the same records whatever the processes (the
pipeline's contract) and the step's randomness is `fold_in(PRNGKey(config.seed), i)`, which the
model splits per example over the GLOBAL batch (threefry is partitionable), so losses do not
depend on the number of processes or devices and a run may resume on another slice size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xmae_jax import config_lib
from xmae_jax import config_rules
from xmae_jax import errors
from xmae_jax import paths
from xmae_jax import models
from xmae_jax.data import pipeline
from xmae_jax.models import layers
from xmae_jax.data import shards
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import curriculum as curriculum_lib
from xmae_jax.training import figures
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import optim
from xmae_jax.training import perf
from xmae_jax.training import prefetch
from xmae_jax.training import sharding
from xmae_jax.training import state as state_lib
from xmae_jax.training import workdir_lock

FIGURE_KEY_SALT = 0x7FFFFFFE
FIGURE_EXAMPLES = 4


class TrainingError(errors.XmaeError):
  """A setting or a state that stops training; the message is one line for the user."""


class NonFiniteLossError(TrainingError):
  """The loss or the gradient became NaN/Inf."""


# ------------------------------------------------------------------------------------- settings

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
  profile: tuple[int, int] | None   # (START, END): trace steps START+1..END


def _plan(config, train_records: int) -> Plan:
  t = config.train
  steps_per_epoch = max(1, train_records // t.batch_size)
  total = int(t.num_steps) if t.num_steps else int(t.num_epochs) * steps_per_epoch
  if total <= 0:
    raise TrainingError(f"train.num_steps={t.num_steps} and train.num_epochs={t.num_epochs}: "
                        "nothing to train")
  if total > config_rules.MAX_STEPS:
    raise TrainingError(f"train.num_epochs={t.num_epochs} x {steps_per_epoch} steps per epoch = "
                        f"{total} steps: more than the 32-bit step counter holds "
                        f"({config_rules.MAX_STEPS})")
  eval_every = int(t.eval_every) or steps_per_epoch
  figure_every = int(t.figure_every) or 3 * eval_every
  profile = tuple(int(v) for v in t.profile_steps or ()) or None
  if profile is not None and profile[1] > total:
    raise TrainingError(f"train.profile_steps={profile}: END is past the run's last step {total}")
  return Plan(total_steps=total, steps_per_epoch=steps_per_epoch, eval_every=eval_every,
              eval_batches=int(t.eval_batches) or None, figure_every=figure_every,
              log_every=max(1, int(t.log_every)), checkpoint_every=int(t.checkpoint_every) or total,
              profile=profile)


def check_settings(config, mesh) -> int:
  """Fails with one line on a setting that cannot work; returns the usable training records."""
  t = config.train
  try:
    models.model_class(config.model.name)
  except models.UnknownModelError as e:
    raise TrainingError(str(e)) from None
  dp = sharding.data_parallel_size(mesh, config.mesh)
  accum = max(1, int(t.grad_accum_steps))
  if t.batch_size <= 0 or t.batch_size % dp:
    raise TrainingError(f"global batch size train.batch_size={t.batch_size} is not divisible by "
                        f"the data-parallel size {dp} (mesh {dict(mesh.shape)})")
  if t.batch_size % (dp * accum):
    raise TrainingError(f"train.batch_size={t.batch_size} is not divisible by data-parallel size "
                        f"{dp} x train.grad_accum_steps={accum}")
  if t.compute_dtype not in layers.COMPUTE_DTYPES:
    raise TrainingError(f"train.compute_dtype={t.compute_dtype!r}: choose one of "
                        f"{', '.join(layers.COMPUTE_DTYPES)}")
  try:
    records = pipeline.count_records(config.data, "train")
    pipeline.count_records(config.data, "validation")
  except shards.DatasetError as e:
    raise TrainingError(str(e)) from None
  if records < t.batch_size:
    raise TrainingError(f"{config.data.dir}: {records} usable training records, fewer than one "
                        f"global batch of {t.batch_size}")
  return records


# ------------------------------------------------------------------------------ preemption

class Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> save and stop. One process: a signal handler (a second
  Ctrl-C stops at once, as KeyboardInterrupt); several: JAX's preemption sync point for
  SIGTERM, so every process agrees on the step and saves its part (Ctrl-C stops them unsaved).

  `signal` names the signal that stopped the run (None while none came)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: str | None = None
    self._previous = {}
    if jax.process_count() == 1:
      for signum in self.SIGNALS:
        try:
          self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:   # not the main thread (e.g. some test runners): no handler
          pass

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt   # asked twice: the user does not want to wait for the save
    self.signal = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal = "SIGTERM"
      except RuntimeError:   # preemption service not running (e.g. disabled by config)
        return False
    return self.signal is not None

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


# ------------------------------------------------------------------------------ loop helpers

@dataclasses.dataclass(frozen=True)
class Due:
  """What a finished step needs."""
  log: bool
  eval: bool
  figure: bool
  checkpoint: bool   # periodic, last or requested stop (best and early stop add to it later)
  stop: bool         # `stop_at_step` reached

  @property
  def sync(self) -> bool:
    """The step's metrics are needed now (not one step later)."""
    return self.log or self.eval or self.checkpoint


def due(plan: Plan, step: int, stop_at_step: int | None) -> Due:
  last = step == plan.total_steps
  stop = step == stop_at_step
  return Due(log=step % plan.log_every == 0 or last, eval=step % plan.eval_every == 0 or last,
             figure=step % plan.figure_every == 0,
             checkpoint=step % plan.checkpoint_every == 0 or last or stop, stop=stop)


class Validation:
  """What follows a validation: the best step, early stopping and the curriculum's mask ratio.

  Its `state_dict()` is the loop state stored in each checkpoint's meta (`loop`), so a resumed
  run continues the same early-stopping count and curriculum level.
  """

  def __init__(self, patience: int, curriculum: curriculum_lib.LadderCurriculum | None = None):
    self.patience = int(patience)
    self.curriculum = curriculum
    self.best_val_loss: float | None = None
    self.best_step: int | None = None
    self.evals_since_best = 0
    self.last_val_loss: float | None = None

  @classmethod
  def from_config(cls, config) -> "Validation":
    masking_config = config.get("masking") or {}
    curriculum = (curriculum_lib.LadderCurriculum.from_config(masking_config)
                  if masking_config.get("curriculum") else None)
    return cls(config.train.early_stop_patience, curriculum)

  @property
  def mask_ratio(self) -> float | None:
    """The curriculum's ratio, or None for the model's own (masking.ratio_ecg)."""
    return self.curriculum.ratio if self.curriculum is not None else None

  def record(self, step: int, val_loss: float) -> list[str]:
    """Takes the validation loss of `step`; returns the messages for the log."""
    messages = []
    self.last_val_loss = val_loss
    improved = self.best_val_loss is None or val_loss < self.best_val_loss
    if improved:
      self.best_val_loss, self.best_step, self.evals_since_best = val_loss, step, 0
    else:
      self.evals_since_best += 1
    if self.curriculum is not None:
      before = self.curriculum.ratio
      self.curriculum.update(val_loss)
      if self.curriculum.ratio != before:
        messages.append(f"step {step}: mask ratio {before:g} -> {self.curriculum.ratio:g}")
        self.evals_since_best = 0
    messages.append(f"step {step}: val_loss {val_loss:.5f}" + (
        " (best)" if improved else f" (best {self.best_val_loss:.5f} at step {self.best_step})"))
    return messages

  def should_stop(self) -> bool:
    return self.evals_since_best > self.patience

  def state_dict(self) -> dict:
    return {"best_val_loss": self.best_val_loss, "best_step": self.best_step,
            "evals_since_best": self.evals_since_best, "last_val_loss": self.last_val_loss,
            # The curriculum's state once it has seen a validation (before, the fresh one).
            "curriculum": (self.curriculum.state_dict()
                           if self.curriculum is not None and self.last_val_loss is not None
                           else None)}

  def load_state_dict(self, loop: dict) -> None:
    self.best_val_loss, self.best_step = loop["best_val_loss"], loop["best_step"]
    self.evals_since_best, self.last_val_loss = loop["evals_since_best"], loop["last_val_loss"]
    if self.curriculum is not None and loop.get("curriculum"):
      self.curriculum.load_state_dict(loop["curriculum"])


def _mean_rows(rows: list[dict]) -> dict[str, float]:
  # In float64 of the rows' values: the same mean whether a row came from the device (float32)
  # or from a checkpoint's meta (a resumed run's window, as JSON floats).
  return {k: float(np.mean(np.asarray([r[k] for r in rows], np.float64))) for k in rows[0]}


# Badput that is not the steps' own: left out of the window's step time (data waits stay in).
_NOT_STEP_TIME = ("compile", "eval", "checkpoint", "other")


class MetricWindow:
  """The training metrics since the last log row.

  A step's metrics are fetched while the next step runs (no stall in the common case), unless
  the step needs them at once (`push(..., sync=True)`). A non-finite step raises
  `NonFiniteLossError` naming it and the last good checkpoint.

  Step time is the window's wall time per step, less what `goodput` booked to compilation,
  evaluation, checkpointing and the profiler meanwhile (data waits count: they slow training);
  `segments_per_s` is the global batch over it, TFLOP/s per device and MFU come from the
  compiled step's FLOPs and the device's peak (`perf`).
  """

  def __init__(self, batch_size: int, steps_per_epoch: int, workdir: Path,
               goodput: perf.Goodput | None = None, peak: perf.Peak | None = None):
    self.batch_size, self.steps_per_epoch, self.workdir = batch_size, steps_per_epoch, workdir
    self.goodput, self.peak = goodput or perf.Goodput(), peak
    self.pending = None
    self.rows: list[dict] = []
    self.restart_clock()

  def _excluded(self) -> float:
    return sum(self.goodput.seconds[k] for k in _NOT_STEP_TIME)

  def restart_clock(self) -> None:
    self.started, self.excluded_at_start = time.perf_counter(), self._excluded()

  def push(self, step: int, out: dict | None, *, sync: bool, last_saved: int | None) -> None:
    """Takes step `step`'s metrics `out` (None: nothing new, only settle the pending step)."""
    done = [self.pending] if self.pending is not None else []
    self.pending = (step, out) if out is not None else None
    if sync and self.pending is not None:
      done.append(self.pending)
      self.pending = None
    for s, o in done:
      o = state_lib.fetch(o)
      if not o.pop("finite"):
        bad = next((k for k in ("loss", "grad_norm") if not np.isfinite(o[k])), "loss")
        good = f"step {last_saved}" if last_saved is not None else "none (no checkpoint yet)"
        raise NonFiniteLossError(
            f"non-finite {bad} ({o[bad]}) at step {s}: training stopped; last good checkpoint: "
            f"{good} in {self.workdir / ckpt_lib.CHECKPOINT_DIR}")
      self.rows.append(o)

  def settle(self, last_saved: int | None) -> None:
    """Fetches (and checks) the step whose metrics are still on the device."""
    if self.pending is not None:
      step, _ = self.pending
      self.push(step, None, sync=True, last_saved=last_saved)

  def state_dict(self) -> list[dict]:
    """The metrics of the steps since the last log row (settled first): saved in a checkpoint's
    meta, so a resumed run's first row averages the same steps as an uninterrupted run's."""
    return [{k: float(v) for k, v in r.items()} for r in self.rows]

  def load_state_dict(self, rows: list[dict]) -> None:
    self.rows = [dict(r) for r in rows]

  def row(self, step: int, mask_ratio: float | None,
          flops_per_device: float | None = None) -> dict | None:
    """The log row of the steps since the last one (None when there are none); starts anew."""
    if not self.rows:
      return None
    elapsed = time.perf_counter() - self.started - (self._excluded() - self.excluded_at_start)
    step_time = max(elapsed, 1e-9) / len(self.rows)
    mean = _mean_rows(self.rows)
    row = {"train_loss": mean.pop("loss"), "lr": float(self.rows[-1]["lr"]),
           "segments_per_s": self.batch_size / step_time, "step_time_s": step_time,
           **perf.throughput(step_time, flops_per_device, self.peak),
           "epoch": step / self.steps_per_epoch}
    row.update({f"train_{k}": v for k, v in mean.items() if k != "lr"})
    if mask_ratio is not None:
      row["mask_ratio"] = mask_ratio
    self.rows = []
    return row


COMPILE_BARRIER_TIMEOUT_S = 3600


class CompiledTogether:
  """A jitted function compiled at its first call, which returns once EVERY process has compiled
  it (a barrier of the distributed runtime); then the compiled executable is called.

  Why: only process 0 writes the persistent compilation cache, and on CPU the cache key differs
  per process (it hashes the topology, which names the process), so on a rerun process 0 loads a
  step from the cache while the others compile it anew (as on hosts with separate caches). The
  first cross-process collective (gloo on CPU) waits only 30 s for a peer, and a step compile
  can take minutes. The runtime's barrier is no collective and waits `COMPILE_BARRIER_TIMEOUT_S`.
  """

  _count = 0   # barrier ids: every process compiles the same programs in the same order

  def __init__(self, jitted, name: str):
    self.jitted, self.name, self.compiled = jitted, name, None

  def compile(self, *args):
    """Compiles for arguments shaped like `args`, then waits for every process to have done so."""
    if self.compiled is None:
      self.compiled = self.jitted.lower(*args).compile()
      if jax.process_count() > 1:
        from jax._src import distributed   # the runtime's barrier has no public name
        CompiledTogether._count += 1
        distributed.global_state.client.wait_at_barrier(
            f"xmae_compiled_{CompiledTogether._count}_{self.name}",
            COMPILE_BARRIER_TIMEOUT_S * 1000)
    return self.compiled

  def __call__(self, *args):
    return self.compile(*args)(*args)


class Steps:
  """The compiled train and eval steps on the mesh, one variant per mask ratio, and the
  placement of host batches.

  A train step variant is compiled ahead of its first call (`lower().compile()`, as `bench
  train` does), so its compilation is booked to `goodput`'s compile time and its FLOPs per
  device (`flops[ratio]`) are known for MFU.
  """

  def __init__(self, config, mesh, graphdef, tx, schedule, state_sh,
               goodput: perf.Goodput | None = None):
    self.config, self.mesh, self.graphdef = config, mesh, graphdef
    self.tx, self.schedule, self.state_sh = tx, schedule, state_sh
    self.goodput = goodput or perf.Goodput()
    self.batch_axes = sharding.batch_axes(mesh, config.mesh)
    self.batch_sh = sharding.batch_sharding(mesh, config.mesh)
    self.metric_sh = sharding.replicated(mesh)
    self._train, self._eval, self._reconstruct = {}, {}, {}
    self.flops: dict[float | None, float | None] = {}

  def to_device(self, host_batch):
    return sharding.place_batch(host_batch, self.mesh, self.batch_axes)

  def train(self, ratio, state, batch):
    """The compiled train step of `ratio` for arguments shaped like `state` and `batch`."""
    if ratio not in self._train:
      with self.goodput.phase("compile"):
        step = CompiledTogether(state_lib.jit_train_step(
            self.graphdef, self.tx, self.schedule, self.config, ratio, self.state_sh,
            self.batch_sh, self.metric_sh), f"train_step_{ratio}")
        step.compile(state, batch)
      self._train[ratio] = step
      self.flops[ratio] = perf.compiled_flops(step.compiled)
    return self._train[ratio]

  def evaluate(self, state, batches, ratio) -> dict[str, float]:
    """Mean validation metrics over `batches` (a host iterator, closed here)."""
    if ratio not in self._eval:
      self._eval[ratio] = CompiledTogether(state_lib.jit_eval_step(
          self.graphdef, self.config, ratio, self.state_sh, self.batch_sh, self.metric_sh),
          f"eval_step_{ratio}")
    fn = self._eval[ratio]
    rows = [state_lib.fetch(fn(state, self.to_device(b), jnp.uint32(i)))
            for i, b in enumerate(batches)]
    pipeline.close(batches)
    return _mean_rows(rows)

  def reconstructions(self, state, host_batch, ratio, n: int) -> dict[str, np.ndarray]:
    """The first `n` rows of a batch and the model's ECG reconstruction (`reconstruct_ecg`),
    replicated, so every process holds them (process 0 draws them)."""
    key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), FIGURE_KEY_SALT)

    def reconstruct(params, batch_stats, b):
      model = state_lib.merge_model(self.graphdef, params, batch_stats)
      model.eval()
      got = model.reconstruct_ecg(b["ppg"], b["ecg"], key, mask_ratio=ratio)
      return {"ppg": b["ppg"][:n], "ecg": b["ecg"][:n], "rec": got["ecg_reconstruction"][:n],
              "masked": got["ecg_masked"][:n]}

    if (ratio, n) not in self._reconstruct:
      self._reconstruct[ratio, n] = CompiledTogether(
          jax.jit(reconstruct, out_shardings=self.metric_sh), f"reconstruct_{ratio}")
    return state_lib.fetch(self._reconstruct[ratio, n](
        state["params"], state["batch_stats"], self.to_device(host_batch)))


def can_plot(config) -> bool:
  """Whether the model draws its own reconstructions (`reconstruct_ecg`)."""
  return hasattr(models.model_class(config.model.name), "reconstruct_ecg")


def _first_batch(val_data):
  batches = iter(val_data)
  try:
    return next(batches)
  finally:
    pipeline.close(batches)


def _draw_figure(steps: Steps, config, workdir: Path, step: int, state, batch, ratio) -> None:
  got = steps.reconstructions(state, batch, ratio, min(FIGURE_EXAMPLES, int(config.train.batch_size)))
  if jax.process_index() == 0:
    shown = float(config.masking.ratio_ecg) if ratio is None else ratio
    figures.plot_reconstructions(
        workdir / "figures" / f"reconstruction_step{step:07d}.png", got["ecg"], got["rec"],
        got["masked"], got["ppg"], sampling_rate=float(config.data.sampling_rate),
        title=f"{config.model.name} step {step}: ECG from PPG, mask ratio {shown:g}")


def _save(ckpt, config, step: int, state, validation: Validation, window: MetricWindow,
          train_it, val_loss=None):
  loop = {**validation.state_dict(), "log_window": window.state_dict()}
  meta = ckpt_lib.meta_dict(config, step, val_loss=val_loss, loop=loop,
                            data_iter_state=train_it.get_state(),
                            process_count=jax.process_count(), device_count=jax.device_count())
  ckpt.save(step, model=state_lib.model_flat(state), opt=state_lib.opt_flat(state),
            data_iter=train_it, meta=meta, val_loss=val_loss)


def _start_from(config, workdir: Path) -> int:
  """train.init_from: another run's weights become checkpoint 0 of this fresh workdir (which
  the resume path below then loads as weights only: new optimizer, data from the start)."""
  if jax.process_count() > 1:
    raise TrainingError("train.init_from takes one process: start the run with one process (it "
                        "writes checkpoint 0 at once), stop it, then continue in that workdir")
  used = _user_errors(ckpt_lib.init_from, workdir, config, config.train.init_from)
  print(f"xmae-train: weights from {config.train.init_from} (step {used})", file=sys.stderr,
        flush=True)
  return 0


def _resume(ckpt, workdir: Path, latest: int, abstract, state_sh, tx, train_it,
            validation: Validation):
  """(the train state of checkpoint `latest`, the training metrics of its unfinished log
  window); the data stream and loop state too when it is a training run's (an importer's
  weights-only checkpoint starts the optimizer and data anew)."""
  meta = ckpt.read_meta(latest)
  full = meta.get("kind") == "train" and ckpt.has_item(latest, "opt")
  same_topology = ckpt.has_item(latest, "data_iter") and (
      workdir / ckpt_lib.CHECKPOINT_DIR / str(latest) / "data_iter" /
      f"process_{jax.process_index()}-of-{jax.process_count()}.json").is_file()
  state = state_lib.restore_state(ckpt, latest, abstract, state_sh, tx, full=full,
                                  data_iter=train_it if full and same_topology else None)
  if full:
    if not same_topology:
      # Another process count: this pipeline's iterator state is the global batch index,
      # the same on every process, so process 0's saved state fits every process.
      train_it.set_state(meta["data_iter_state"])
    validation.load_state_dict(meta["loop"])
  return state, (meta.get("loop") or {}).get("log_window") or []


def _announce(progress, config, plan: Plan, mesh, abstract, state_sh, start: int, workdir,
              peak: perf.Peak | None, *, restored: bool = False) -> None:
  progress.message(
      f"xmae-train: {config.model.name} ({state_lib.num_params(abstract):,} parameters), "
      f"{plan.total_steps} steps of {config.train.batch_size} ({plan.steps_per_epoch} per epoch), "
      f"mesh {dict(mesh.shape)} on {jax.process_count()} process(es), "
      + (f"resumed at step {start}" if start else
         "from the weights of checkpoint 0 (optimizer and data from the start)" if restored else
         "from scratch") + f"; workdir {workdir}")
  sharded, leaves = state_lib.param_placement(state_sh)
  if sharded:
    progress.message(f"FSDP-sharded parameters: {sharded} of {leaves}")
  if peak is not None:
    progress.message(peak.describe())


def _user_errors(fn, *args, **kwargs):
  """`fn(...)`, its user errors (mesh, rules, checkpoints) re-raised as one-line TrainingErrors."""
  try:
    return fn(*args, **kwargs)
  except (sharding.ShardingError, ckpt_lib.CheckpointError, workdir_lock.WorkdirBusyError) as e:
    raise TrainingError(str(e)) from None


def _last_intact(workdir: Path) -> str:
  steps = sorted(int(p.name) for p in (workdir / ckpt_lib.CHECKPOINT_DIR).glob("*")
                 if p.name.isdigit()) if (workdir / ckpt_lib.CHECKPOINT_DIR).is_dir() else []
  return (f"checkpoint step {steps[-1]} is intact: free space and rerun the same command to resume"
          if steps else "no checkpoint had been written")


# ---------------------------------------------------------------------------------- training

def train(config, workdir, *, stop_at_step: int | None = None,
          allow_changes: tuple[str, ...] = ()) -> dict:
  """Trains `config` in `workdir` (resuming from its newest intact checkpoint when it holds one;
  refused with one line while another run holds the workdir, or when the run there had other
  `checkpoint.RUN_SETTINGS` than those named in `allow_changes`); returns a summary.

  `stop_at_step`: save and stop after this step (staged jobs and tests); the run continues
  from there when started again. A workdir that cannot take files fails before any work, and a
  write the storage refuses later (a full disk) ends the run with one line naming the file;
  the checkpoints written before it stay intact.
  """
  workdir = paths.path(workdir)
  try:
    paths.check_writable(workdir, "workdir")
  except errors.XmaeError as e:
    raise TrainingError(str(e)) from None
  try:
    with contextlib.ExitStack() as held:   # the workdir lock, released however train ends
      return _train(config, workdir, stop_at_step, tuple(allow_changes), held)
  except ckpt_lib.CheckpointWriteError as e:
    raise TrainingError(f"{e}; {_last_intact(workdir)}") from None
  except errors.XmaeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # only refused writes are replaced
    reason = errors.storage_reason(e)
    if reason is None:
      raise
    where = getattr(e, "filename", None) or workdir   # metrics, config, TensorBoard, figures
    raise TrainingError(
        f"{where} could not be written: {reason}; {_last_intact(workdir)}") from None


def _train(config, workdir: Path, stop_at_step: int | None, allow_changes: tuple[str, ...],
           held: contextlib.ExitStack) -> dict:
  goodput = perf.Goodput()
  chief = jax.process_index() == 0
  t = config.train

  # 1-2. settings, mesh, data
  mesh = _user_errors(sharding.make_mesh, config.mesh)
  train_records = check_settings(config, mesh)
  held.enter_context(_user_errors(workdir_lock.acquire, workdir))
  latest = _user_errors(ckpt_lib.check_compatible, workdir, config, resume=True,
                        allow_changes=allow_changes)
  if latest is None and t.init_from:
    latest = _start_from(config, workdir)
  plan = _plan(config, train_records)
  rows = sharding.host_rows(mesh, t.batch_size, sharding.batch_axes(mesh, config.mesh))
  train_it = pipeline.make_train_iterator(config.data, global_batch_size=t.batch_size,
                                          seed=int(config.seed), rows=rows)
  # Built once: shards opened and the selection resolved here, read again at each evaluation
  # (not kept in memory: a real validation split can be gigabytes).
  val_data = pipeline.make_eval_dataset(config.data, global_batch_size=t.batch_size,
                                        num_batches=plan.eval_batches, rows=rows, num_workers=0,
                                        cache=False)

  # 3. model, optimizer, shardings; fresh or resumed
  tx, schedule = optim.make_optimizer(t, plan.total_steps)
  init = state_lib.init_fn(config, tx, mesh)
  abstract = jax.eval_shape(init)
  state_sh = _user_errors(state_lib.state_shardings, abstract, mesh, config)
  steps = Steps(config, mesh, state_lib.model_graphdef(config), tx, schedule, state_sh, goodput)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(t.keep_checkpoints))
  validation = Validation.from_config(config)
  with jax.set_mesh(mesh):
    fallback, log_window = None, []
    if latest is None:
      state = state_lib.host_init(init, state_sh)
    else:
      latest, (state, log_window), fallback = _user_errors(   # the newest intact checkpoint
          ckpt_lib.restore_newest_intact, ckpt, [s for s in ckpt.all_steps()[::-1] if s <= latest],
          lambda s: _resume(ckpt, workdir, s, abstract, state_sh, tx, train_it, validation))
      ckpt.set_aside([s for s in ckpt.all_steps() if s > latest])   # corrupt: this run rewrites them
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
    _announce(progress, config, plan, mesh, abstract, state_sh, start, workdir, peak,
              restored=latest is not None)
    if fallback:
      progress.message(f"xmae-train: {fallback}; newer ones moved to {workdir / ckpt_lib.CORRUPT_DIR}")

    # 4. the loop
    preemption = Preemption()
    window = MetricWindow(int(t.batch_size), plan.steps_per_epoch, workdir, goodput, peak)
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
        now = due(plan, step, stop_at_step)
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
            _draw_figure(steps, config, workdir, step, state, _first_batch(val_data),
                         validation.mask_ratio)
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
          progress.message(f"step {step}: early stop, no val_loss improvement in "
                           f"{validation.evals_since_best} evaluations")
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
        progress.message(f"step {step}: stopped by {preemption.signal}; checkpoint saved, rerun "
                         "the same command to resume")
    finally:
      with contextlib.ExitStack() as closing:   # each one closed even when another fails
        for close in (lambda: pipeline.close(batches), ckpt.close, writer.close, progress.close,
                      preemption.close, profile.close):
          closing.callback(close)
  return {"status": status, "signal": preemption.signal, "step": step,
          "total_steps": plan.total_steps,
          "best_val_loss": validation.best_val_loss, "best_step": validation.best_step,
          "last_val_loss": validation.last_val_loss, "last_checkpoint": last_saved,
          "workdir": str(workdir)}
