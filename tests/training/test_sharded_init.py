"""The sharded initial state (training.state.sharded_init, `train.init`): on 2 processes x 4
fake CPU devices with a data 2 x fsdp 4 mesh, the tiny xMAE's state computed on the devices
equals the one built on the host, leaf by leaf and shard by shard, and each device holds a
quarter of every sharded buffer; "auto" picks by the state's size and a bad value is one line.
"""

import pytest

from tests.helpers import mp_util
from tests.helpers import train_runner
from xmae_jax.training import optim
from xmae_jax.training import state as state_lib

SCRIPT = """
from tests.helpers import mp_util
mp_util.initialize()
import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from xmae_jax import config_lib
from xmae_jax.training import optim, sharding, state as state_lib

config = config_lib.load(
    "configs/xmae.py:tiny",
    {
        "mesh.axes": '(("data", -1), ("fsdp", 4))',
        "mesh.param_rules": '((".*", "fsdp"),)',
        "train.state_layout": "buffers",
    },
)
mesh = sharding.make_mesh(config.mesh)
tx, _ = optim.make_optimizer(config.train, 100)
init = state_lib.init_fn(config, tx, mesh)
abstract = jax.eval_shape(init)
state_sh = state_lib.state_shardings(abstract, mesh, config)
with jax.set_mesh(mesh):
  host = state_lib.host_init(init, state_sh)
  config.train.init = "sharded"
  dev = state_lib.initial_state(config, init, abstract, state_sh)
differ, leaves, sharded_bytes, device_bytes = [], 0, 0, {}
for i, (h, d) in enumerate(zip(jax.tree.leaves(host), jax.tree.leaves(dev))):
  leaves += 1
  assert d.sharding.is_equivalent_to(h.sharding, h.ndim), i
  for hs, ds in zip(h.addressable_shards, d.addressable_shards):
    assert hs.device == ds.device and hs.index == ds.index
    if not np.array_equal(np.asarray(hs.data), np.asarray(ds.data)):
      differ.append(i)
    if d.sharding.spec != P():
      device_bytes[str(ds.device)] = device_bytes.get(str(ds.device), 0) + ds.data.nbytes
  if d.sharding.spec != P():
    sharded_bytes += d.nbytes
mp_util.emit({
    "leaves": leaves, "differ": sorted(set(differ)), "sharded_bytes": sharded_bytes,
    "device_bytes": device_bytes, "state_bytes": state_lib.state_bytes(abstract),
})
"""


def test_sharded_init_equals_host_init_and_splits_by_fsdp():
  results = mp_util.run_processes(SCRIPT, 2, devices_per_process=4, timeout=300)
  for r in results:
    got = r.result
    assert got["leaves"] > 0 and got["differ"] == [], got
    # Sharded buffers hold most of the state (every parameter's rule is "fsdp" here).
    assert got["sharded_bytes"] > 0.9 * got["state_bytes"], got
    assert len(got["device_bytes"]) == 4  # this process's devices
    for nbytes in got["device_bytes"].values():
      assert nbytes * 4 == got["sharded_bytes"], got


def test_init_mode_auto_picks_by_size_and_rejects_unknown_values(monkeypatch):
  import jax

  config = train_runner.load_config("configs/xmae.py:tiny")
  tx, _ = optim.make_optimizer(config.train, 100)
  abstract = jax.eval_shape(state_lib.init_fn(config, tx))
  assert config.train.init == "auto"
  assert 0 < state_lib.state_bytes(abstract) < state_lib.SHARDED_INIT_BYTES
  assert state_lib.init_mode(config, abstract) == "host"
  monkeypatch.setattr(state_lib, "SHARDED_INIT_BYTES", state_lib.state_bytes(abstract) - 1)
  assert state_lib.init_mode(config, abstract) == "sharded"
  config.train.init = "host"
  assert state_lib.init_mode(config, abstract) == "host"
  config.train.init = "device"
  with pytest.raises(state_lib.StateError, match="train.init='device'") as e:
    state_lib.init_mode(config, abstract)
  assert "\n" not in str(e.value)
