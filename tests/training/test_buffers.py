"""Contiguous buffers (xmae_jax.training.buffers): a tree packs into one buffer per dtype and
sharding group and unpacks to the same arrays; layouts are interned; optax keeps its moments in
the same layout; a sharded group is padded to whole, aligned shards."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from xmae_jax.training import buffers


def _tree():
  rng = np.random.default_rng(0)
  return {
      "enc": {
          "kernel": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(7,)), jnp.float32),
      },
      "table": jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.bfloat16),
      "temperature": jnp.float32(0.07),
  }


def _place(name, leaf):
  del leaf
  return (P(None, "fsdp") if name == "enc.kernel" else P()), name.startswith("enc.")


def test_pack_unpack_round_trip_one_buffer_per_dtype_and_group():
  tree = _tree()
  layout = buffers.Layout.build(tree, _place, shards=4)
  assert [(g.key, g.dtype, g.spec) for g in layout.groups] == [
      ("bfloat16", "bfloat16", P()),
      ("float32", "float32", P()),
      ("float32_sharded", "float32", P("fsdp")),
  ]
  packed = jax.jit(layout.pack)(tree)
  assert len(jax.tree.leaves(packed)) == 3
  sizes = {g.key: g.size for g in layout.groups}
  assert sizes["float32_sharded"] % (4 * buffers.ALIGN) == 0  # whole, aligned shards
  assert all(s.offset % buffers.ALIGN == 0 for s in layout.slots)
  assert packed["float32"].shape == (sizes["float32"],)
  back = jax.jit(buffers.unpack)(packed)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The gaps between leaves are zeros: elementwise optimizers keep them zero.
  used = sum(s.size for s in layout.slots if s.group == "float32_sharded")
  assert float(jnp.abs(packed["float32_sharded"]).sum()) > 0
  assert int(jnp.count_nonzero(packed["float32_sharded"])) <= used
  assert layout.num_elements() == sum(x.size for x in jax.tree.leaves(tree))


def test_layouts_are_interned_and_shards_only_split_when_asked():
  tree = _tree()
  assert buffers.Layout.build(tree, _place, 4) is buffers.Layout.build(tree, _place, 4)
  one = buffers.Layout.build(tree, _place, 1)
  assert one is not buffers.Layout.build(tree, _place, 4)
  assert [g.key for g in one.groups] == ["bfloat16", "float32"]


def test_optax_state_keeps_the_layout_and_unpacks_to_the_named_moments():
  tree = jax.tree.map(lambda x: x.astype(jnp.float32), _tree())
  layout = buffers.Layout.build(tree, _place, 1)
  tx = optax.adamw(1e-3, weight_decay=0.01)
  flat_opt = tx.init(layout.pack(tree))
  assert len(jax.tree.leaves(flat_opt)) == 3  # count, mu, nu
  named = buffers.unpack_all(flat_opt)
  assert jax.tree.structure(named) == jax.tree.structure(tx.init(tree))
  keys = [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(layout.pack(tree))[0]
  ]
  assert keys == ["['float32']"]
  shardings = buffers.leaf_shardings(jax.tree.map(lambda x: x.sharding, layout.pack(tree)))
  assert jax.tree.structure(shardings) == jax.tree.structure(tree)
