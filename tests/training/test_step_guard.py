"""The train step's NaN guard: a non-finite step returns the state it was given, leaf by leaf
(floats, integers and typed PRNG keys), and a finite step updates it."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xmae_jax.training import optim
from xmae_jax.training import train as train_lib

HERE = Path(__file__).resolve().parent


def test_select_state_picks_whole_states_including_keys():
  new = {"w": jnp.ones(3), "n": jnp.int32(5), "k": jax.random.key(1)}
  old = {"w": jnp.zeros(3), "n": jnp.int32(4), "k": jax.random.key(2)}
  for keep, want in ((True, new), (False, old)):
    got = jax.jit(train_lib._select_state)(jnp.bool_(keep), new, old)
    np.testing.assert_array_equal(got["w"], want["w"])
    assert int(got["n"]) == int(want["n"])
    np.testing.assert_array_equal(jax.random.key_data(got["k"]), jax.random.key_data(want["k"]))


def test_non_finite_step_keeps_the_state():
  sys.path.insert(0, str(HERE))
  import train_runner  # pylint: disable=g-import-not-at-top
  train_runner.register_toy_model()
  from flax import nnx
  from xmae_jax import models
  config = train_runner.load_config("configs/xmae.py:tiny")
  config.model.name = "toy_mae"
  tx, schedule = optim.make_optimizer(config.train, 10)
  graphdef = train_lib._split(models.build(config, nnx.Rngs(0)))[0]
  state = train_lib._init_fn(config, tx)()
  step = jax.jit(train_lib.make_train_step(graphdef, tx, schedule, config, None))
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
    np.testing.assert_array_equal(_raw(a), _raw(b))


def _raw(x):
  return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                    else x)
