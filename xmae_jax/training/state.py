"""The train state and the jitted steps: what `train()`, the benchmarks and the tests share.

The train state is a plain pytree of arrays, `{"params", "batch_stats", "opt", "step"}`, with
`params` and `batch_stats` the model's nested dicts of arrays (`nnx.to_pure_dict`).
It crosses `jax.jit` as is, so a step call flattens arrays only, no NNX Variable objects; the
step merges the model from the graph definition inside the trace. Every model of the registry
holds parameters and BatchNorm statistics only (dropout and masks take their randomness from
the step's key), which `split_model` checks, so the state has no typed PRNG-key leaves.

The checkpoint layout does not depend on this representation: `model_flat` / `opt_flat` give
the same dotted names as the NNX `State` trees of `nnx.state(model)` (checkpoint.flatten drops
NNX's trailing `.value`), so checkpoints written by earlier versions and by the importer resume.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xmae_jax import errors
from xmae_jax import models
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import sharding

EVAL_KEY_SALT = 0x7FFFFFFF   # eval masks: fold_in(fold_in(seed, SALT), eval batch): fixed per run

TrainState = dict   # {"params": dict, "batch_stats": dict, "opt": optax state, "step": int32}


class StateError(errors.XmaeError):
  """A model whose state the trainer cannot carry."""


def split_model(model) -> tuple[nnx.GraphDef, dict, dict]:
  """(graphdef, params, batch statistics) of `model`, the last two as nested dicts of arrays.

  Fails when the model holds any other state (an RNG stream, a counter): the step would not
  carry it and the NaN guard and checkpoints would not see it.
  """
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  left = [jax.tree_util.keystr(p, simple=True, separator=".")
          for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0]]
  if left:
    raise StateError(f"{type(model).__name__} holds state other than parameters and batch "
                     f"statistics ({len(left)} entries, e.g. {left[0]}): the trainer cannot carry it")
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def model_graphdef(config) -> nnx.GraphDef:
  """The graph definition of the model `config` names, without allocating parameters."""
  return split_model(nnx.eval_shape(lambda: models.build(config, nnx.Rngs(int(config.seed)))))[0]


def merge_model(graphdef, params: dict, batch_stats: dict, *, copy: bool = False):
  """The NNX model of a state's `params` and `batch_stats` (inside or outside a trace)."""
  return nnx.merge(graphdef, params, batch_stats, copy=copy)


def init_fn(config, tx: optax.GradientTransformation) -> Callable[[], TrainState]:
  """A function building the initial train state (its shapes: `jax.eval_shape(init_fn(...))`)."""
  def init():
    _, params, batch_stats = split_model(models.build(config, nnx.Rngs(int(config.seed))))
    return {"params": params, "batch_stats": batch_stats, "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}
  return init


def state_shardings(abstract: TrainState, mesh, config):
  """NamedShardings of every state leaf by `config.mesh.param_rules` (by its path)."""
  return sharding.tree_shardings(abstract, mesh, config.mesh.param_rules)


def host_init(init: Callable[[], TrainState], state_sh) -> TrainState:
  """The initial state built once on this host's CPU, then placed on the mesh by the rules.

  The models are small (millions of parameters), so building them on one host device costs
  little, gives the same initial values on every topology, and the eager per-shape compiles are
  shared by every mesh (a `jit(init, out_shardings=...)` would compile anew per mesh; it is the
  choice for models that do not fit one device).
  """
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    state = init()
  host = jax.tree.map(np.asarray, state)
  # Numpy inputs hold the same values on every process; jit places them by the shardings.
  return jax.jit(lambda s: s, out_shardings=state_sh)(host)


def model_flat(state: TrainState) -> dict:
  """The checkpoint's `model` item: {dotted name: array} of parameters and batch statistics."""
  return {**ckpt_lib.flatten(state["params"]), **ckpt_lib.flatten(state["batch_stats"])}


def opt_flat(state: TrainState) -> dict:
  """The checkpoint's `opt` item: the optimizer state and the step."""
  return ckpt_lib.flatten({"opt": state["opt"], "step": state["step"]})


def select_state(keep_new, new, old):
  """`new` where `keep_new` (a scalar bool), else `old`, leaf by leaf.

  A per-leaf select fuses into the fusions that compute the new leaves (the optimizer update),
  where a `lax.cond` over the whole state made XLA:CPU copy the whole state in and out of the
  branch computations every step.
  """
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def _scalars(aux: dict, skip) -> dict:
  return {k: v for k, v in aux.items() if k not in skip and jnp.ndim(v) == 0}


def make_train_step(graphdef, tx, schedule, config, mask_ratio: float | None):
  """(state, batch) -> (state, metrics): one optimizer update over the global batch.

  The step's key is `fold_in(PRNGKey(config.seed), state["step"])` (micro-batch j of gradient
  accumulation: `fold_in(key, j)`); a non-finite loss or gradient norm returns the state given.
  """
  base_key = jax.random.PRNGKey(int(config.seed))
  accum = max(1, int(config.train.grad_accum_steps))

  def loss_fn(params, batch_stats, batch, key):
    # copy=True: fresh Variables at this trace level (BatchNorm statistics are updated in place).
    model = merge_model(graphdef, params, batch_stats, copy=True)
    model.train()
    loss, aux = model.loss(batch, key, mask_ratio=mask_ratio)
    return loss, (aux, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(state, batch, key):
    # Micro-batch j holds rows j, j+accum, ... so every device keeps its own rows.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1), batch)
    add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731

    def body(carry, xs):
      grads_sum, loss_sum, aux_sum, stats = carry
      j, mb = xs
      (loss, (aux, stats)), grads = grad_fn(state["params"], stats, mb, jax.random.fold_in(key, j))
      return (add(grads_sum, grads), loss_sum + loss, add(aux_sum, aux), stats), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    aux_shape = jax.eval_shape(lambda: grad_fn(state["params"], state["batch_stats"],
                                               jax.tree.map(lambda x: x[0], micro), key)[0][1][0])
    aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    (grads, loss, aux, stats), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), aux0, state["batch_stats"]),
        (jnp.arange(accum), micro))
    mean = lambda t: jax.tree.map(lambda a: a / accum, t)  # noqa: E731
    return loss / accum, mean(aux), stats, mean(grads)

  def step_fn(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    if accum == 1:
      (loss, (aux, stats)), grads = grad_fn(state["params"], state["batch_stats"], batch, key)
    else:
      loss, aux, stats, grads = accumulate(state, batch, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "batch_stats": stats, "opt": opt, "step": state["step"] + 1}
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the state as it was: the loop stops and nothing bad is saved.
    new = select_state(finite, new, state)
    out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}
    out.update(_scalars(aux, out))
    return new, out

  return step_fn


def make_eval_step(graphdef, config, mask_ratio: float | None):
  """(state, batch, index) -> metrics: the validation loss with masks fixed per batch index."""
  base_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), EVAL_KEY_SALT)

  def eval_fn(state, batch, index):
    model = merge_model(graphdef, state["params"], state["batch_stats"])
    model.eval()
    loss, aux = model.loss(batch, jax.random.fold_in(base_key, index), mask_ratio=mask_ratio)
    return {"loss": loss, **_scalars(aux, ("loss",))}

  return eval_fn


def jit_train_step(graphdef, tx, schedule, config, mask_ratio, state_sh, batch_sh, metric_sh):
  """The train step jitted with explicit shardings and the state donated."""
  return jax.jit(make_train_step(graphdef, tx, schedule, config, mask_ratio),
                 in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, metric_sh),
                 donate_argnums=0)


def jit_eval_step(graphdef, config, mask_ratio, state_sh, batch_sh, metric_sh):
  return jax.jit(make_eval_step(graphdef, config, mask_ratio),
                 in_shardings=(state_sh, batch_sh, None), out_shardings=metric_sh)


def restore_state(ckpt, step: int, abstract: TrainState, state_sh, tx, *, full: bool,
                  data_iter=None) -> TrainState:
  """The train state of checkpoint `step`, placed by `state_sh`.

  `full`: the checkpoint holds the optimizer state and step (a training run's); otherwise it is
  weights only (an importer's) and the optimizer starts fresh at step 0. `data_iter`: a Grain
  iterator restored in place from the checkpoint's per-process state.
  """
  model_target = ckpt_lib.abstract_of(model_flat(abstract), model_flat(state_sh))
  opt_target = ckpt_lib.abstract_of(opt_flat(abstract), opt_flat(state_sh)) if full else None
  restored = ckpt.restore(step, model=model_target, opt=opt_target, data_iter=data_iter)
  params = ckpt_lib.unflatten(abstract["params"], restored["model"])
  stats = ckpt_lib.unflatten(abstract["batch_stats"], restored["model"])
  if full:
    opt_part = ckpt_lib.unflatten({"opt": abstract["opt"], "step": abstract["step"]},
                                  restored["opt"])
  else:
    opt_part = jax.jit(lambda p: {"opt": tx.init(p), "step": jnp.zeros((), jnp.int32)},
                       out_shardings={"opt": state_sh["opt"], "step": state_sh["step"]})(params)
  return {"params": params, "batch_stats": stats, **opt_part}


def num_params(abstract: TrainState) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))


def fetch(tree) -> Any:
  """Numpy copies of a tree of (replicated) device arrays."""
  return jax.tree.map(lambda v: np.asarray(jax.device_get(v)), tree)
