"""The train state and step (xmae_jax.training.state): the NaN guard returns the state it was
given, leaf by leaf (floats and integers), and a finite step updates it; the state is a pytree
of a few buffers whose checkpoint view has the names of the NNX state; the buffers give the same
losses, parameters and optimizer state as nested dicts (AdamW with weight decay, clipping,
gradient accumulation); a checkpoint written from nested dicts resumes into buffers; models
with other state fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import train_runner
from xmae_jax import models
from xmae_jax.training import buffers
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import optim
from xmae_jax.training import state as state_lib


def _toy_config():
  train_runner.register_toy_model()
  config = train_runner.load_config("configs/xmae.py:tiny")
  config.model.name = "toy_mae"
  return config


def test_select_state_picks_whole_states():
  new = {"w": jnp.ones(3), "n": jnp.int32(5), "k": jnp.array([1, 2], jnp.uint32)}
  old = {"w": jnp.zeros(3), "n": jnp.int32(4), "k": jnp.array([3, 4], jnp.uint32)}
  for keep, want in ((True, new), (False, old)):
    got = jax.jit(state_lib.select_state)(jnp.bool_(keep), new, old)
    np.testing.assert_array_equal(got["w"], want["w"])
    assert int(got["n"]) == int(want["n"])
    np.testing.assert_array_equal(got["k"], want["k"])


@pytest.mark.parametrize("flat", [True, False])
def test_non_finite_step_keeps_the_state(flat):
  config = _toy_config()
  tx, schedule = optim.make_optimizer(config.train, 10)
  graphdef = state_lib.split_model(models.build(config, nnx.Rngs(0)))[0]
  state = state_lib.init_fn(config, tx, flat=flat)()
  step = jax.jit(state_lib.make_train_step(graphdef, tx, schedule, config, None))
  rng = np.random.default_rng(0)
  length = int(config.model.seq_len)
  batch = {
      k: jnp.asarray(rng.uniform(-1, 1, (4, length)).astype(np.float32)) for k in ("ppg", "ecg")
  }
  state, _ = step(state, batch)  # the warm-up starts at lr 0: step 0 moves nothing
  before = jax.tree.map(np.asarray, state["params"])
  good, out = step(state, batch)
  assert bool(out["finite"]) and int(good["step"]) == 2
  assert any(
      not np.array_equal(a, np.asarray(b))
      for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(good["params"]))
  )
  bad_batch = {**batch, "ecg": batch["ecg"].at[0, 0].set(jnp.nan)}
  kept, out = step(good, bad_batch)
  assert not bool(out["finite"]) and int(kept["step"]) == 2
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["toy_mae", "xmae", "m2ae"])
def test_state_is_plain_arrays_with_the_checkpoint_names_of_the_nnx_state(name):
  """Checkpoints written from NNX `State` trees (earlier trainers, the importer) keep resuming:
  the pure-dict train state flattens to the same names, for the model and the optimizer."""
  config = _toy_config()
  if name == "m2ae":
    config = train_runner.load_config("configs/m2ae.py:tiny")
  config.model.name = name
  tx, _ = optim.make_optimizer(config.train, 10)
  abstract = jax.eval_shape(state_lib.init_fn(config, tx, flat=True))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert len(jax.tree.leaves(abstract)) <= 8  # buffers, Adam's counts and the step
  named = jax.eval_shape(buffers.unpack_all, abstract)
  assert all(type(t) is dict for t in (named["params"], named["batch_stats"]))
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert set(state_lib.model_flat(abstract)) == set(ckpt_lib.flatten(nnx.state(model)))
  old_opt = jax.eval_shape(tx.init, params)
  assert set(state_lib.opt_flat(abstract)) == set(
      ckpt_lib.flatten({"opt": old_opt, "step": abstract["step"]})
  )


def test_a_model_with_rng_state_is_refused():
  class WithRngs(nnx.Module):

    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.rngs = nnx.Rngs(0)

  with pytest.raises(state_lib.StateError, match="WithRngs holds state other than"):
    state_lib.split_model(WithRngs())


def _batches(config, n, size=4):
  rng = np.random.default_rng(1)
  length = int(config.model.seq_len)
  return [
      {
          k: jnp.asarray(rng.uniform(-1, 1, (size, length)).astype(np.float32))
          for k in ("ppg", "ecg")
      }
      for _ in range(n)
  ]


def _train(config, tx, schedule, flat, batches):
  graphdef = state_lib.model_graphdef(config)
  state = state_lib.init_fn(config, tx, flat=flat)()
  step = jax.jit(state_lib.make_train_step(graphdef, tx, schedule, config, None))
  losses, norms = [], []
  for batch in batches:
    state, out = step(state, batch)
    losses.append(float(out["loss"]))
    norms.append(float(out["grad_norm"]))
  return losses, norms, state


def test_buffers_give_the_updates_of_nested_dicts():
  """AdamW (weight decay on every parameter), a global-norm clip that binds, and 2 micro-batches
  of gradient accumulation: losses, parameters, statistics and moments after 4 steps match the
  nested-dict state to float tolerance."""
  config = _toy_config()
  config.train.grad_clip_norm = 0.05
  config.train.grad_accum_steps = 2
  config.train.weight_decay = 0.1
  tx, schedule = optim.make_optimizer(config.train, 8)
  batches = _batches(config, 4)
  flat_losses, flat_norms, flat = _train(config, tx, schedule, True, batches)
  tree_losses, tree_norms, tree = _train(config, tx, schedule, False, batches)
  assert min(tree_norms) > config.train.grad_clip_norm  # the clip binds
  np.testing.assert_allclose(flat_norms, tree_norms, rtol=1e-5)
  assert len(jax.tree.leaves(flat)) < len(jax.tree.leaves(tree))
  np.testing.assert_allclose(flat_losses, tree_losses, rtol=1e-6)
  assert len(set(np.round(tree_losses, 6))) > 1
  for got, want in (
      (state_lib.model_flat(flat), state_lib.model_flat(tree)),
      (state_lib.opt_flat(flat), state_lib.opt_flat(tree)),
  ):
    assert got.keys() == want.keys()
    for k in want:
      assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
      np.testing.assert_allclose(
          np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-7, err_msg=k
      )
  before = state_lib.model_flat(state_lib.init_fn(config, tx, flat=False)())
  assert any(not np.allclose(before[k], got) for k, got in state_lib.model_flat(flat).items())


def test_a_checkpoint_of_nested_dicts_resumes_into_buffers(tmp_path):
  """The layout on disk is the one written before buffers: a nested-dict state saved as
  checkpoint items restores into the buffers with the same values, and back."""
  config = _toy_config()
  tx, schedule = optim.make_optimizer(config.train, 8)
  _, _, tree = _train(config, tx, schedule, False, _batches(config, 2))
  ckpt = ckpt_lib.Checkpointer(tmp_path, async_save=False)
  ckpt.save(
      2,
      model=state_lib.model_flat(tree),
      opt=state_lib.opt_flat(tree),
      meta=ckpt_lib.meta_dict(config, 2),
  )
  ckpt.wait()
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  abstract = jax.eval_shape(state_lib.init_fn(config, tx, mesh, flat=True))
  state_sh = state_lib.state_shardings(abstract, mesh, config)
  with jax.set_mesh(mesh):
    flat = state_lib.restore_state(ckpt, 2, abstract, state_sh, tx, full=True)
  ckpt.close()
  assert jax.tree.structure(flat) == jax.tree.structure(abstract)
  assert int(flat["step"]) == 2
  for got, want in (
      (state_lib.model_flat(flat), state_lib.model_flat(tree)),
      (state_lib.opt_flat(flat), state_lib.opt_flat(tree)),
  ):
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_state_layout_follows_the_config_and_auto_keeps_nested_dicts_on_cpu():
  config = _toy_config()
  assert state_lib.state_layout(config) == "tree"  # auto on CPU
  tx, _ = optim.make_optimizer(config.train, 10)
  assert type(jax.eval_shape(state_lib.init_fn(config, tx))["params"]) is dict
  with config.unlocked():
    config.train.state_layout = "buffers"
  assert state_lib.state_layout(config) == "buffers"
  assert buffers.is_buffers(jax.eval_shape(state_lib.init_fn(config, tx))["params"])
  config.train.state_layout = "flat"
  with pytest.raises(state_lib.StateError, match="train.state_layout='flat': choose one of"):
    state_lib.init_fn(config, tx)
