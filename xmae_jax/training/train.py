"""The one training loop: `train(config, workdir) -> summary`, for every model and topology.

Read top to bottom:
  1. check the settings (each bad one fails here with one clear line);
  2. the mesh, the data streams (each process reads its rows of every global batch);
  3. the model from the registry, split once into (graphdef, state); parameters and optimizer
     state are created directly sharded by the rules in `config.mesh.param_rules`;
  4. resume from the workdir's latest checkpoint when there is one;
  5. a plain `jax.jit` train step (NNX merge inside, donated state, explicit shardings), one
     compiled variant per mask ratio of the curriculum;
  6. the loop: step, log, validate (early stopping, curriculum, best checkpoint), figures,
     periodic and preemption checkpoints, the NaN/Inf guard.

Topology independence: global batch i holds the same records whatever the processes (the
pipeline's contract) and the step's randomness is `fold_in(PRNGKey(config.seed), i)`, which the
model splits per example over the GLOBAL batch (threefry is partitionable), so losses do not
depend on the number of processes or devices and a run may resume on another slice size.
"""
from __future__ import annotations

import dataclasses
import functools
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from xmae_jax import models
from xmae_jax.data import pipeline
from xmae_jax.data import shards
from xmae_jax.models import masking
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import figures
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import optim
from xmae_jax.training import sharding

EVAL_KEY_SALT = 0x7FFFFFFF   # eval masks: fold_in(fold_in(seed, SALT), eval batch): fixed per run
FIGURE_KEY_SALT = 0x7FFFFFFE
FIGURE_EXAMPLES = 4


class TrainingError(ValueError):
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


def _plan(config, train_records: int) -> Plan:
  t = config.train
  steps_per_epoch = max(1, train_records // t.batch_size)
  total = int(t.num_steps) if t.num_steps else int(t.num_epochs) * steps_per_epoch
  if total <= 0:
    raise TrainingError(f"train.num_steps={t.num_steps} and train.num_epochs={t.num_epochs}: "
                        "nothing to train")
  eval_every = int(t.eval_every) or steps_per_epoch
  figure_every = int(t.figure_every) or 3 * eval_every
  return Plan(total_steps=total, steps_per_epoch=steps_per_epoch, eval_every=eval_every,
              eval_batches=int(t.eval_batches) or None, figure_every=figure_every,
              log_every=max(1, int(t.log_every)), checkpoint_every=int(t.checkpoint_every) or total)


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
  if t.compute_dtype not in ("float32", "bfloat16"):
    raise TrainingError(f"train.compute_dtype={t.compute_dtype!r}: choose float32 or bfloat16")
  try:
    records = pipeline.count_records(config.data, "train")
    pipeline.count_records(config.data, "validation")
  except shards.DatasetError as e:
    raise TrainingError(str(e)) from None
  if records < t.batch_size:
    raise TrainingError(f"{config.data.dir}: {records} usable training records, fewer than one "
                        f"global batch of {t.batch_size}")
  return records


# ------------------------------------------------------------------------------------ the state

def _split(model):
  """(graphdef, params, everything else: BatchNorm statistics, RNG state)."""
  return nnx.split(model, nnx.Param, ...)


def _init_fn(config, tx) -> Callable[[], dict]:
  def init():
    graphdef, params, rest = _split(models.build(config, nnx.Rngs(int(config.seed))))
    del graphdef
    return {"params": params, "rest": rest, "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}
  return init


def _host_init(init, state_sh):
  """The initial state built once on this host's CPU, then placed on the mesh by the rules.

  The models are small (millions of parameters), so building them on one host device costs
  little, gives the same initial values on every topology, and the eager per-shape compiles are
  shared by every mesh (a `jit(init, out_shardings=...)` would compile anew per mesh; it is the
  choice for models that do not fit one device).
  """
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    state = init()
  leaves, treedef = jax.tree.flatten(state)
  impls = [jax.random.key_impl(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else None
           for x in leaves]
  host = [np.asarray(x if impl is None else jax.random.key_data(x)) for x, impl in zip(leaves, impls)]

  def place(host_leaves):
    return jax.tree.unflatten(treedef, [x if impl is None else jax.random.wrap_key_data(x, impl=impl)
                                        for x, impl in zip(host_leaves, impls)])

  # Numpy inputs hold the same values on every process; jit places them by the shardings.
  return jax.jit(place, out_shardings=state_sh)(host)


def _model_flat(state) -> dict:
  return {**ckpt_lib.flatten(state["params"]), **ckpt_lib.flatten(state["rest"])}


def _opt_flat(state) -> dict:
  return ckpt_lib.flatten({"opt": state["opt"], "step": state["step"]})


# ----------------------------------------------------------------------------------- the steps

def _select_state(keep_new, new, old):
  """`new` where `keep_new` (a scalar bool), else `old`, leaf by leaf.

  A per-leaf select fuses into the fusions that compute the new leaves (the optimizer update),
  where a `lax.cond` over the whole state made XLA:CPU copy the 78 MB state in and out of the
  branch computations every step. Typed PRNG keys are selected through their raw data.
  """
  def select(n, o):
    if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
      data = jnp.where(keep_new, jax.random.key_data(n), jax.random.key_data(o))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(n))
    return jnp.where(keep_new, n, o)
  return jax.tree.map(select, new, old)


def make_train_step(graphdef, tx, schedule, config, mask_ratio: float):
  """(state, batch) -> (state, metrics): one optimizer update over the global batch."""
  base_key = jax.random.PRNGKey(int(config.seed))
  accum = max(1, int(config.train.grad_accum_steps))

  def loss_fn(params, rest, batch, key):
    # copy=True: fresh Variables at this trace level (BatchNorm statistics are updated in place).
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.train()
    loss, aux = model.loss(batch, key, mask_ratio=mask_ratio)
    return loss, (aux, nnx.state(model, nnx.Not(nnx.Param)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    if accum == 1:
      (loss, (aux, rest)), grads = grad_fn(state["params"], state["rest"], batch, key)
    else:
      # Micro-batch j holds rows j, j+accum, ... so every device keeps its own rows.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1), batch)

      def body(carry, xs):
        grads_sum, loss_sum, aux_sum, rest = carry
        j, mb = xs
        (loss, (aux, rest)), grads = grad_fn(state["params"], rest, mb, jax.random.fold_in(key, j))
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (add(grads_sum, grads), loss_sum + loss, add(aux_sum, aux), rest), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      aux_shape = jax.eval_shape(lambda: grad_fn(state["params"], state["rest"],
                                                 jax.tree.map(lambda x: x[0], micro), key)[0][1][0])
      aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
      (grads, loss, aux, rest), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), aux0, state["rest"]),
          (jnp.arange(accum), micro))
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss = loss / accum
      aux = jax.tree.map(lambda a: a / accum, aux)
    grad_norm = optax.tree.norm(grads)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the state as it was: the loop stops and nothing bad is saved.
    new = _select_state(finite, new, state)
    out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
           "finite": finite}
    out.update({k: v for k, v in aux.items() if k not in out and jnp.ndim(v) == 0})
    return new, out

  return step_fn


def make_eval_step(graphdef, config, mask_ratio: float):
  base_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), EVAL_KEY_SALT)

  def eval_fn(state, batch, index):
    model = nnx.merge(graphdef, state["params"], state["rest"])
    model.eval()
    loss, aux = model.loss(batch, jax.random.fold_in(base_key, index), mask_ratio=mask_ratio)
    out = {"loss": loss}
    out.update({k: v for k, v in aux.items() if k != "loss" and jnp.ndim(v) == 0})
    return out

  return eval_fn


# ------------------------------------------------------------------------------ loop helpers

class Preemption:
  """SIGTERM -> save and stop. One process: a signal handler; several: JAX's preemption sync
  point, so every process agrees on the step and saves its part."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:   # not the main thread (e.g. some test runners): no handler
        self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:   # preemption service not running (e.g. disabled by config)
        return False
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class LoopState:
  """Host-side state that must survive a restart (stored in each checkpoint's meta)."""
  best_val_loss: float | None = None
  best_step: int | None = None
  evals_since_best: int = 0
  last_val_loss: float | None = None
  curriculum: dict | None = None

  def to_dict(self):
    return dataclasses.asdict(self)


def _fetch(x):
  return jax.tree.map(lambda v: np.asarray(jax.device_get(v)), x)


def _mean_rows(rows: list[dict]) -> dict[str, float]:
  keys = rows[0].keys()
  return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _can_plot(config) -> bool:
  # Models called as model(ppg, ecg, ecg_keep) -> {"ecg_reconstruction"} (the README contract).
  return config.model.name == "xmae"


# ---------------------------------------------------------------------------------- training

def train(config, workdir, *, stop_at_step: int | None = None) -> dict:
  """Trains `config` in `workdir` (resuming when it holds a checkpoint); returns a summary.

  `stop_at_step`: save and stop after this step (staged jobs and tests); the run continues
  from there when started again.
  """
  workdir = Path(workdir)
  chief = jax.process_index() == 0
  t = config.train

  # 1-2. settings, mesh, data ------------------------------------------------------------------
  try:
    mesh = sharding.make_mesh(config.mesh)
  except sharding.ShardingError as e:
    raise TrainingError(str(e)) from None
  train_records = check_settings(config, mesh)
  try:
    latest = ckpt_lib.check_compatible(workdir, config)
  except ckpt_lib.CheckpointError as e:
    raise TrainingError(str(e)) from None
  plan = _plan(config, train_records)
  batch_axes = sharding.batch_axes(mesh, config.mesh)
  rows = pipeline.host_rows(mesh, t.batch_size, batch_axes)
  train_it = pipeline.make_train_iterator(config.data, global_batch_size=t.batch_size,
                                          seed=int(config.seed), rows=rows)

  def eval_batches():
    return pipeline.make_eval_iterator(config.data, global_batch_size=t.batch_size,
                                       num_batches=plan.eval_batches, rows=rows, num_workers=0)

  # 3. model, optimizer, shardings --------------------------------------------------------------
  tx, schedule = optim.make_optimizer(t, plan.total_steps)
  graphdef = _split(nnx.eval_shape(lambda: models.build(config, nnx.Rngs(int(config.seed)))))[0]
  init = _init_fn(config, tx)
  abstract = jax.eval_shape(init)
  try:
    state_sh = sharding.tree_shardings(abstract, mesh, config.mesh.param_rules)
  except sharding.ShardingError as e:
    raise TrainingError(str(e)) from None
  batch_sh = sharding.batch_sharding(mesh, config.mesh)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(t.keep_checkpoints))
  loop = LoopState()
  masking_config = config.get("masking") or {}
  curriculum = (masking.LadderCurriculum.from_config(masking_config)
                if masking_config.get("curriculum") else None)
  with jax.set_mesh(mesh):
    # 4. fresh or resumed ---------------------------------------------------------------------
    model_target = ckpt_lib.abstract_of(_model_flat(abstract), _model_flat(state_sh))
    if latest is None:
      state = _host_init(init, state_sh)
      start = 0
    else:
      meta = ckpt.read_meta(latest)
      full = meta.get("kind") == "train" and ckpt.has_item(latest, "opt")
      opt_target = ckpt_lib.abstract_of(_opt_flat(abstract), _opt_flat(state_sh)) if full else None
      same_topology = ckpt.has_item(latest, "data_iter") and (
          workdir / ckpt_lib.CHECKPOINT_DIR / str(latest) / "data_iter" /
          f"process_{jax.process_index()}-of-{jax.process_count()}.json").is_file()
      restored = ckpt.restore(latest, model=model_target, opt=opt_target,
                              data_iter=train_it if full and same_topology else None)
      if full:
        opt_part = ckpt_lib.unflatten({"opt": abstract["opt"], "step": abstract["step"]}, restored["opt"])
        if not same_topology:
          # Another process count: this pipeline's iterator state is the global batch index,
          # the same on every process, so process 0's saved state fits every process.
          train_it.set_state(meta["data_iter_state"])
        loop = LoopState(**meta["loop"])
      else:   # weights only (imported): fresh optimizer and data order, from step 0
        opt_part = jax.jit(lambda p: {"opt": tx.init(p), "step": jnp.zeros((), jnp.int32)},
                           out_shardings={"opt": state_sh["opt"], "step": state_sh["step"]})(
                               ckpt_lib.unflatten(abstract["params"], restored["model"]))
      state = {"params": ckpt_lib.unflatten(abstract["params"], restored["model"]),
               "rest": ckpt_lib.unflatten(abstract["rest"], restored["model"]), **opt_part}
      start = int(jax.device_get(state["step"]))
    if curriculum is not None and loop.curriculum:
      curriculum.load_state_dict(loop.curriculum)

    if chief:
      ckpt_lib.write_config(workdir, config)
      metrics_lib.truncate_after(workdir, start)
    writer = metrics_lib.MetricsWriter(workdir, active=chief)
    progress = metrics_lib.Progress(plan.total_steps, start, active=chief)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    progress.message(
        f"xmae-train: {config.model.name} ({num_params:,} parameters), {plan.total_steps} steps "
        f"of {t.batch_size} ({plan.steps_per_epoch} per epoch), mesh {dict(mesh.shape)} on "
        f"{jax.process_count()} process(es), " + (f"resumed at step {start}" if start else "from scratch")
        + f"; workdir {workdir}")
    sharded = sharding.describe(state_sh["params"])
    if sharded:
      progress.message(f"FSDP-sharded parameters: {len(sharded)} of "
                       f"{len(jax.tree.leaves(abstract['params']))}")

    # 5. compiled steps, one per mask ratio -----------------------------------------------------
    metric_sh = NamedSharding(mesh, P())

    @functools.lru_cache(maxsize=None)
    def train_step(ratio):
      return jax.jit(make_train_step(graphdef, tx, schedule, config, ratio),
                     in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, metric_sh),
                     donate_argnums=0)

    @functools.lru_cache(maxsize=None)
    def eval_step(ratio):
      return jax.jit(make_eval_step(graphdef, config, ratio),
                     in_shardings=(state_sh, batch_sh, None), out_shardings=metric_sh)

    def current_ratio():
      return curriculum.ratio if curriculum is not None else None

    def to_device(host_batch):
      return pipeline.to_global(host_batch, mesh, batch_axes)

    def evaluate(state) -> float:
      fn = eval_step(current_ratio())
      it = eval_batches()
      rows_out = [_fetch(fn(state, to_device(b), jnp.uint32(i))) for i, b in enumerate(it)]
      pipeline.close(it)
      return _mean_rows(rows_out)

    def save(step, state, val_loss=None):
      meta = ckpt_lib.meta_dict(config, step, val_loss=val_loss, loop=loop.to_dict(),
                                data_iter_state=train_it.get_state(),
                                process_count=jax.process_count(), device_count=jax.device_count())
      ckpt.save(step, model=_model_flat(state), opt=_opt_flat(state), data_iter=train_it,
                meta=meta, val_loss=val_loss)

    def plot(step, state):
      if not _can_plot(config):
        return
      batch = next(iter(eval_batches()))
      batch = to_device(batch)
      ratio = current_ratio() if current_ratio() is not None else float(config.masking.ratio_ecg)
      n_patches = int(config.model.seq_len) // int(config.model.patch_len)
      key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), FIGURE_KEY_SALT)
      n = min(FIGURE_EXAMPLES, int(t.batch_size))

      def reconstruct(params, rest, b):
        k = masking.sample_keep_ids(key, int(t.batch_size), n_patches, ratio, config.masking.mode)
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        rec = model(b["ppg"], b["ecg"], k)["ecg_reconstruction"]
        masked = masking.sample_mask(k, n_patches, int(config.model.patch_len)) > 0
        return {"ppg": b["ppg"][:n], "ecg": b["ecg"][:n], "rec": rec[:n], "masked": masked[:n]}

      # Replicated outputs: every process holds the few plotted rows (process 0 draws them).
      got = _fetch(jax.jit(reconstruct, out_shardings=metric_sh)(
          state["params"], state["rest"], batch))
      if chief:
        figures.plot_reconstructions(
            workdir / "figures" / f"reconstruction_step{step:07d}.png", got["ecg"], got["rec"],
            got["masked"], got["ppg"],
            sampling_rate=float(config.data.sampling_rate),
            title=f"{config.model.name} step {step}: ECG from PPG, mask ratio {ratio:g}")

    # 6. the loop -------------------------------------------------------------------------------
    preemption = Preemption()
    status, pending, window = "completed", None, []
    step = start
    t_window = time.perf_counter()
    last_saved = latest if latest is not None and start > 0 else None
    try:
      while step < plan.total_steps:
        if preemption.reached(step):
          status = "preempted"
          break
        state, out = train_step(current_ratio())(state, to_device(next(train_it)))
        step += 1
        # Fetch the previous step's metrics while this one runs (no stall in the common case).
        done = [pending] if pending is not None else []
        pending = (step, out)
        is_log = step % plan.log_every == 0 or step == plan.total_steps
        is_eval = step % plan.eval_every == 0 or step == plan.total_steps
        if is_log or is_eval or step % plan.checkpoint_every == 0 or step == stop_at_step:
          done.append(pending)
          pending = None
        for s, o in done:
          o = _fetch(o)
          if not o.pop("finite"):
            bad = next((k for k in ("loss", "grad_norm") if not np.isfinite(o[k])), "loss")
            good = f"step {last_saved}" if last_saved is not None else "none (no checkpoint yet)"
            raise NonFiniteLossError(
                f"non-finite {bad} ({o[bad]}) at step {s}: training stopped; last good checkpoint: "
                f"{good} in {workdir / ckpt_lib.CHECKPOINT_DIR}")
          window.append(o)
        row = None
        if is_log and window:
          elapsed = time.perf_counter() - t_window
          mean = _mean_rows(window)
          row = {"train_loss": mean.pop("loss"), "lr": float(window[-1]["lr"]),
                 "segments_per_s": len(window) * t.batch_size / max(elapsed, 1e-9),
                 "epoch": step / plan.steps_per_epoch}
          row.update({f"train_{k}": v for k, v in mean.items() if k != "lr"})
          if curriculum is not None:
            row["mask_ratio"] = curriculum.ratio
          window = []
        val_loss = None
        if is_eval:
          val = evaluate(state)
          val_loss = val.pop("loss")
          row = row or {}
          row["val_loss"] = val_loss
          row.update({f"val_{k}": v for k, v in val.items()})
          loop.last_val_loss = val_loss
          improved = loop.best_val_loss is None or val_loss < loop.best_val_loss
          if improved:
            loop.best_val_loss, loop.best_step, loop.evals_since_best = val_loss, step, 0
          else:
            loop.evals_since_best += 1
          if curriculum is not None:
            before = curriculum.ratio
            curriculum.update(val_loss)
            loop.curriculum = curriculum.state_dict()
            if curriculum.ratio != before:
              progress.message(f"step {step}: mask ratio {before:g} -> {curriculum.ratio:g}")
              loop.evals_since_best = 0
          progress.message(f"step {step}: val_loss {val_loss:.5f}"
                           + (" (best)" if improved else f" (best {loop.best_val_loss:.5f} at step {loop.best_step})"))
        if row is not None:
          writer.write(step, row)
          progress.update(step, loss=row.get("train_loss", float("nan")), lr=row.get("lr", 0.0))
        if step % plan.figure_every == 0:
          plot(step, state)
        stop_early = is_eval and loop.evals_since_best > int(t.early_stop_patience)
        if (step % plan.checkpoint_every == 0 or (is_eval and loop.best_step == step)
            or step == plan.total_steps or step == stop_at_step or stop_early):
          save(step, state, val_loss)
          last_saved = step
        if stop_early:
          status = "early_stopped"
          progress.message(f"step {step}: early stop, no val_loss improvement in "
                           f"{loop.evals_since_best} evaluations")
          break
        if step == stop_at_step:
          status = "stopped"
          break
        if is_log or is_eval:
          t_window = time.perf_counter()
      if status == "preempted":
        if last_saved != step:
          save(step, state, None)
          last_saved = step
        progress.message(f"step {step}: preempted (SIGTERM); checkpoint saved, rerun the same "
                         "command to resume")
    finally:
      preemption.close()
      progress.close()
      writer.close()
      ckpt.close()
      pipeline.close(train_it)
  return {"status": status, "step": step, "total_steps": plan.total_steps,
          "best_val_loss": loop.best_val_loss, "best_step": loop.best_step,
          "last_val_loss": loop.last_val_loss, "last_checkpoint": last_saved,
          "workdir": str(workdir)}
