"""The train state and step (xmae_jax.training.state): the NaN guard returns the state it was
given, leaf by leaf (floats and integers), and a finite step updates it; the state is a plain
pytree of arrays with the checkpoint names of the NNX state; models with other state fail."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xmae_jax import models
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import optim
from xmae_jax.training import state as state_lib

HERE = Path(__file__).resolve().parent


def _toy_config():
  sys.path.insert(0, str(HERE))
  import train_runner  # pylint: disable=g-import-not-at-top
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


def test_non_finite_step_keeps_the_state():
  config = _toy_config()
  tx, schedule = optim.make_optimizer(config.train, 10)
  graphdef = state_lib.split_model(models.build(config, nnx.Rngs(0)))[0]
  state = state_lib.init_fn(config, tx)()
  step = jax.jit(state_lib.make_train_step(graphdef, tx, schedule, config, None))
  rng = np.random.default_rng(0)
  length = int(config.model.seq_len)
  batch = {k: jnp.asarray(rng.uniform(-1, 1, (4, length)).astype(np.float32))
           for k in ("ppg", "ecg")}
  state, _ = step(state, batch)            # the warm-up starts at lr 0: step 0 moves nothing
  before = jax.tree.map(np.asarray, state["params"])
  good, out = step(state, batch)
  assert bool(out["finite"]) and int(good["step"]) == 2
  assert any(not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(good["params"])))
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
    import train_runner  # pylint: disable=g-import-not-at-top
    config = train_runner.load_config("configs/m2ae.py:tiny")
  config.model.name = name
  tx, _ = optim.make_optimizer(config.train, 10)
  abstract = jax.eval_shape(state_lib.init_fn(config, tx))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert all(type(t) is dict for t in (abstract["params"], abstract["batch_stats"]))
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert set(state_lib.model_flat(abstract)) == set(ckpt_lib.flatten(nnx.state(model)))
  old_opt = jax.eval_shape(tx.init, params)
  assert set(state_lib.opt_flat(abstract)) == set(ckpt_lib.flatten(
      {"opt": old_opt, "step": abstract["step"]}))


def test_a_model_with_rng_state_is_refused():
  class WithRngs(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.rngs = nnx.Rngs(0)

  with pytest.raises(state_lib.StateError, match="WithRngs holds state other than"):
    state_lib.split_model(WithRngs())
