"""The train state and the jitted steps: what `train()`, the benchmarks and the tests share.

The train state is a pytree of a few arrays, `{"params", "batch_stats", "opt", "step"}`, with
`params` and `batch_stats` kept as contiguous buffers (`training.buffers`: one 1-D array per
dtype and sharding group) and the optimizer's moments in the same buffers (optax maps over
leaves, so `tx.init` of buffers gives buffers). Why: calling a jitted step costs host time per
leaf it takes and returns (flatten, donation, unflatten); the paper model's state as nested
dicts has 822 leaves, as buffers 7, and on an accelerator a step is short enough for that to
matter (`python -m xmae_jax.benchmarks train` reports `host_overhead_ms` and `state_leaves`).
Inside the step the model's nested dicts are rebuilt by static slices, the gradient is taken
with respect to them and concatenated back into buffers, and AdamW, clipping and weight decay
(elementwise, or a global norm) run on the buffers: the same updates as on the nested dicts
(tests/training/test_step_guard.py). `init_fn(..., flat=False)` keeps the nested dicts (the
benchmark's comparison); every function here takes either.

Placement: `config.mesh.param_rules` decides each parameter's group ("fsdp" leaves go to their
dtype's sharded buffer, split 1-D over the fsdp axis, gathered whole inside the step as FSDP
does; everything else to the replicated one). Every model of the registry holds parameters and
BatchNorm statistics only (dropout and masks take their randomness from the step's key), which
`split_model` checks, so the state has no typed PRNG-key leaves.

The checkpoint layout does not depend on this representation: `model_flat` / `opt_flat` unpack
the buffers into the same dotted names, shapes and per-leaf shardings as the NNX `State` trees
of `nnx.state(model)` (checkpoint.flatten drops NNX's trailing `.value`), and `restore_state`
packs them back, so checkpoints written by earlier versions and by the importer resume.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from xmae_jax import models
from xmae_jax import training
from xmae_jax.training import buffers
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import sharding

EVAL_KEY_SALT = 0x7FFFFFFF  # eval masks: fold_in(fold_in(seed, SALT), eval batch): fixed per run

TrainState = dict  # {"params": Buffers, "batch_stats": Buffers, "opt": optax state, "step": int32}


class StateError(training.TrainingError):
  """A model whose state the trainer cannot carry."""


def split_model(model) -> tuple[nnx.GraphDef, dict, dict]:
  """(graphdef, params, batch statistics) of `model`, the last two as nested dicts of arrays.

  Fails when the model holds any other state (an RNG stream, a counter): the step would not
  carry it and the NaN guard and checkpoints would not see it.
  """
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  left = [
      jax.tree_util.keystr(p, simple=True, separator=".")
      for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0]
  ]
  if left:
    raise StateError(
        f"{type(model).__name__} holds state other than parameters and batch "
        f"statistics ({len(left)} entries, e.g. {left[0]}): "
        "the trainer cannot carry it"
    )
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def model_graphdef(config) -> nnx.GraphDef:
  """The graph definition of the model `config` names, without allocating parameters."""
  return split_model(nnx.eval_shape(lambda: models.build(config, nnx.Rngs(int(config.seed)))))[0]


def merge_model(graphdef, params, batch_stats, *, copy: bool = False):
  """The NNX model of a state's `params` and `batch_stats` (buffers or nested dicts), inside or
  outside a trace; sharded buffers are gathered whole first (under `jax.set_mesh`)."""
  return nnx.merge(
      graphdef,
      buffers.unpack(params, gather=True),
      buffers.unpack(batch_stats, gather=True),
      copy=copy,
  )


def _rule(path: str, rules) -> str | None:
  """The rule of the first pattern of `rules` that matches `path` (sharding.spec_for's order)."""
  return next((str(r) for p, r in rules if re.search(str(p), path)), None)


def layout(tree: dict, prefix: str, mesh=None, rules=()) -> buffers.Layout:
  """The buffers layout of `tree` (a model's params or batch statistics, named under `prefix`
  in the rules' paths, as the state's leaves were before): each leaf keeps the PartitionSpec
  the rules give it (its checkpoint placement); leaves whose rule is "fsdp" share their dtype's
  sharded buffer when `mesh` has an fsdp axis of more than one device."""
  if mesh is None:
    return buffers.Layout.build(tree, lambda name, leaf: (jax.sharding.PartitionSpec(), False))
  own = sharding.tree_shardings({prefix: tree}, mesh, rules)[prefix]
  specs = {k: s.spec for k, s in ckpt_lib.flatten(own).items()}
  shards = int(mesh.shape["fsdp"]) if "fsdp" in mesh.axis_names else 1

  def place(name, leaf):
    del leaf
    return specs[name], _rule(f"{prefix}/{name.replace('.', '/')}", rules) == "fsdp"

  return buffers.Layout.build(tree, place, shards)


LAYOUTS = ("auto", "buffers", "tree")


def state_layout(config, mesh=None) -> str:
  """ "buffers" or "tree": `config.train.state_layout`, "auto" resolved here.

  "auto" picks "buffers" on accelerators, where the host's per-leaf cost of a step call is a
  large share of a short step, and "tree" on CPU, where a step is long and the buffers' extra
  copies (unpack slices, gradient concatenation) are not paid back (BENCHMARKS.md, "Host cost
  per step call").
  """
  layout_name = str(config.train.state_layout)
  if layout_name not in LAYOUTS:
    raise StateError(
        f"config train.state_layout={layout_name!r}: choose one of {', '.join(LAYOUTS)}"
    )
  if layout_name != "auto":
    return layout_name
  device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
  return "tree" if device.platform == "cpu" else "buffers"


def init_fn(
    config, tx: optax.GradientTransformation, mesh=None, *, flat: bool | None = None
) -> Callable[[], TrainState]:
  """A function building the initial train state (its shapes: `jax.eval_shape(init_fn(...))`).

  `mesh`: the mesh the state will live on (its fsdp axis size decides the sharded buffers and
  their padding; None: one device). `flat`: params and statistics as buffers (True) or nested
  dicts (False); None: as `state_layout(config, mesh)` says.
  """
  rules = config.mesh.param_rules
  if flat is None:
    flat = state_layout(config, mesh) == "buffers"

  def init():
    _, params, batch_stats = split_model(models.build(config, nnx.Rngs(int(config.seed))))
    if flat:
      params = layout(params, "params", mesh, rules).pack(params)
      batch_stats = layout(batch_stats, "batch_stats", mesh, rules).pack(batch_stats)
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }

  return init


def state_shardings(abstract: TrainState, mesh, config):
  """NamedShardings of every state leaf: buffers by their group, any other leaf by
  `config.mesh.param_rules` on its path."""
  own = sharding.tree_shardings(
      jax.tree.map(
          lambda x: x.layout.leaf_abstract() if buffers.is_buffers(x) else x,
          abstract,
          is_leaf=buffers.is_buffers,
      ),
      mesh,
      config.mesh.param_rules,
  )
  return jax.tree.map(
      lambda x, s: x.layout.shardings(mesh) if buffers.is_buffers(x) else s,
      abstract,
      own,
      is_leaf=buffers.is_buffers,
  )


def host_init(init: Callable[[], TrainState], state_sh) -> TrainState:
  """The initial state built once on this host's CPU, then placed on the mesh by the rules.

  Small models (millions of parameters) cost little to build on one host device, and the
  eager per-shape compiles are shared by every mesh. A large state (the 1b preset's is 12 GB
  with its AdamW moments) goes through `sharded_init` instead (`initial_state`).
  """
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    state = init()
  host = jax.tree.map(np.asarray, state)
  # Numpy inputs hold the same values on every process; jit places them by the shardings.
  return jax.jit(lambda s: s, out_shardings=state_sh)(host)


def sharded_init(init: Callable[[], TrainState], state_sh) -> TrainState:
  """The initial state computed on the devices, each computing only its own shards (with
  several processes, each its addressable ones): no host ever holds the whole state. The
  values are host_init's (threefry bits do not depend on the sharding, and the initializers'
  draws are the eager ones: models.layers); the program is compiled anew per mesh."""
  return jax.jit(init, out_shardings=state_sh)()


INITS = ("auto", "host", "sharded")
# Above this many bytes of state (parameters, statistics and optimizer moments), "auto" builds
# it sharded: 1.25 GB for the 100m preset, 0.05 GB for the paper model.
SHARDED_INIT_BYTES = 1 << 30


def state_bytes(abstract: TrainState) -> int:
  """Bytes of a state's arrays (`jax.eval_shape(init_fn(...)())`)."""
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def init_mode(config, abstract: TrainState) -> str:
  """ "host" or "sharded": `config.train.init`, "auto" resolved by the state's size."""
  mode = str(config.train.get("init", "auto"))
  if mode not in INITS:
    raise StateError(f"config train.init={mode!r}: choose one of {', '.join(INITS)}")
  if mode != "auto":
    return mode
  return "sharded" if state_bytes(abstract) > SHARDED_INIT_BYTES else "host"


def initial_state(config, init: Callable[[], TrainState], abstract: TrainState, state_sh):
  """The fresh run's initial state on the mesh, built as `init_mode` says."""
  if init_mode(config, abstract) == "sharded":
    return sharded_init(init, state_sh)
  return host_init(init, state_sh)


# --- The checkpoint's view: every buffer unpacked into its named leaves ---------------------------


def _named(tree):
  """`tree` with its buffers unpacked: arrays placed by each leaf's own sharding (a device
  computation), or shapes only for ShapeDtypeStructs."""
  leaves = jax.tree.leaves(tree)
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
    return jax.eval_shape(buffers.unpack_all, tree)
  out_sh = (
      buffers.leaf_shardings(jax.tree.map(lambda x: x.sharding, tree))
      if all(isinstance(x, jax.Array) for x in leaves)
      else None
  )
  return jax.jit(buffers.unpack_all, out_shardings=out_sh)(tree)


def model_flat(state: TrainState) -> dict:
  """The checkpoint's `model` item: {dotted name: array} of parameters and batch statistics."""
  named = _named({"params": state["params"], "batch_stats": state["batch_stats"]})
  return {**ckpt_lib.flatten(named["params"]), **ckpt_lib.flatten(named["batch_stats"])}


def opt_flat(state: TrainState) -> dict:
  """The checkpoint's `opt` item: the optimizer state and the step."""
  return ckpt_lib.flatten(_named({"opt": state["opt"], "step": state["step"]}))


def pack_named(abstract: TrainState, named: dict) -> TrainState:
  """The inverse of the checkpoint's view: `named` (nested dicts and an optax state of named
  leaves) in the layout of `abstract` (traceable)."""
  return jax.tree.map(buffers.pack_like, abstract, named, is_leaf=buffers.is_buffers)


def param_placement(state_sh) -> tuple[int, int]:
  """(parameter leaves split over a mesh axis, all parameter leaves) of a state's shardings."""

  def split(s) -> bool:
    return isinstance(s, NamedSharding) and any(a is not None for a in s.spec)

  params = state_sh["params"]
  if buffers.is_buffers(params):
    sharded = {g.key for g, s in zip(params.layout.groups, params.arrays) if split(s)}
    return sum(s.group in sharded for s in params.layout.slots), len(params.layout.slots)
  leaves = jax.tree.leaves(params)
  return sum(split(s) for s in leaves), len(leaves)


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
  Buffers are unpacked once per step; the gradient is taken with respect to the nested dicts
  (their backward pass is one concatenation, where a gradient with respect to the buffers would
  sum one zero-padded buffer per leaf) and packed into the parameters' layout for the optimizer.
  """
  base_key = jax.random.PRNGKey(int(config.seed))
  accum = max(1, int(config.train.grad_accum_steps))

  def loss_fn(params, batch_stats, batch, key):
    # copy=True: fresh Variables at this trace level (BatchNorm statistics are updated in place).
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    model.train()
    loss, aux = model.loss(batch, key, mask_ratio=mask_ratio)
    return loss, (aux, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(params, batch_stats, batch, key):
    # Micro-batch j holds rows j, j+accum, ... so every device keeps its own rows.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1), batch
    )
    add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731

    def body(carry, xs):
      grads_sum, loss_sum, aux_sum, stats = carry
      j, mb = xs
      (loss, (aux, stats)), grads = grad_fn(params, stats, mb, jax.random.fold_in(key, j))
      return (add(grads_sum, grads), loss_sum + loss, add(aux_sum, aux), stats), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    aux_shape = jax.eval_shape(
        lambda: grad_fn(params, batch_stats, jax.tree.map(lambda x: x[0], micro), key)[0][1][0]
    )
    aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    (grads, loss, aux, stats), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), aux0, batch_stats), (jnp.arange(accum), micro)
    )
    mean = lambda t: jax.tree.map(lambda a: a / accum, t)  # noqa: E731
    return loss / accum, mean(aux), stats, mean(grads)

  def step_fn(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    params = buffers.unpack(state["params"], gather=True)
    batch_stats = buffers.unpack(state["batch_stats"], gather=True)
    if accum == 1:
      (loss, (aux, stats)), grads = grad_fn(params, batch_stats, batch, key)
    else:
      loss, aux, stats, grads = accumulate(params, batch_stats, batch, key)
    grads = buffers.pack_like(state["params"], grads, scatter=True)
    stats = buffers.pack_like(state["batch_stats"], stats, scatter=True)
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
  return jax.jit(
      make_train_step(graphdef, tx, schedule, config, mask_ratio),
      in_shardings=(state_sh, batch_sh),
      out_shardings=(state_sh, metric_sh),
      donate_argnums=0,
  )


def jit_eval_step(graphdef, config, mask_ratio, state_sh, batch_sh, metric_sh):
  return jax.jit(
      make_eval_step(graphdef, config, mask_ratio),
      in_shardings=(state_sh, batch_sh, None),
      out_shardings=metric_sh,
  )


def restore_state(
    ckpt, step: int, abstract: TrainState, state_sh, tx, *, full: bool, data_iter=None
) -> TrainState:
  """The train state of checkpoint `step`, placed by `state_sh`.

  The checkpoint's named leaves are read with their own shardings and packed into the buffers
  of `abstract` on the devices. `full`: the checkpoint holds the optimizer state and step (a
  training run's); otherwise it is weights only (an importer's) and the optimizer starts fresh
  at step 0. `data_iter`: a Grain iterator restored in place from the checkpoint's per-process
  state.
  """
  named = jax.eval_shape(buffers.unpack_all, abstract)
  named_sh = buffers.leaf_shardings(state_sh)
  model_part = lambda t: {**ckpt_lib.flatten(t["params"]), **ckpt_lib.flatten(t["batch_stats"])}  # noqa: E731
  opt_part = lambda t: ckpt_lib.flatten({"opt": t["opt"], "step": t["step"]})  # noqa: E731
  model_target = ckpt_lib.abstract_of(model_part(named), model_part(named_sh))
  opt_target = ckpt_lib.abstract_of(opt_part(named), opt_part(named_sh)) if full else None
  restored = ckpt.restore(step, model=model_target, opt=opt_target, data_iter=data_iter)
  model = {
      "params": ckpt_lib.unflatten(named["params"], restored["model"]),
      "batch_stats": ckpt_lib.unflatten(named["batch_stats"], restored["model"]),
  }
  like = {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}
  state = jax.jit(lambda m: pack_named(like, m), out_shardings={k: state_sh[k] for k in like})(
      model
  )
  if full:
    opt = ckpt_lib.unflatten({"opt": named["opt"], "step": named["step"]}, restored["opt"])
    like = {"opt": abstract["opt"], "step": abstract["step"]}
    state.update(
        jax.jit(lambda o: pack_named(like, o), out_shardings={k: state_sh[k] for k in like})(opt)
    )
  else:
    state.update(
        jax.jit(
            lambda p: {"opt": tx.init(p), "step": jnp.zeros((), jnp.int32)},
            out_shardings={"opt": state_sh["opt"], "step": state_sh["step"]},
        )(state["params"])
    )
  return state


def num_params(abstract: TrainState) -> int:
  """Parameters of the model (a buffer's padding not counted)."""
  return sum(
      x.layout.num_elements() if buffers.is_buffers(x) else int(np.prod(x.shape))
      for x in jax.tree.leaves(abstract["params"], is_leaf=buffers.is_buffers)
  )


def fetch(tree) -> Any:
  """Numpy copies of a tree of (replicated) device arrays."""
  return jax.tree.map(lambda v: np.asarray(jax.device_get(v)), tree)
