"""The device mesh, parameter placement rules kept as data, and batch sharding.

One `jax.sharding.Mesh` with named axes from `config.mesh.axes` (`(("data", -1), ("fsdp", 1))`:
-1 takes all remaining devices). Parameters and optimizer state are placed by
`config.mesh.param_rules`, a list of `(regex, rule)` matched against each leaf's '/'-joined path
(first match wins):
  "replicate"  a full copy on every device (the default: the models are small);
  "fsdp"       shard the largest dimension divisible by the fsdp axis size over "fsdp"
               (big_vision's rule); leaves with no such dimension stay replicated.
Batches are split over `config.mesh.batch_axes` (data and fsdp by default), so FSDP is a config
change with no code change in the step.

The mesh uses `AxisType.Auto` (jax.make_mesh defaults to Explicit): the compiler propagates
shardings through the model, which needs no per-layer annotations for data/FSDP parallelism.
"""

from __future__ import annotations

import math
import re
import types
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from xmae_jax import training

RULES = ("replicate", "fsdp")


class ShardingError(training.TrainingError):
  """A mesh or a rule that does not fit the devices or the parameters."""


def mesh_shape(
    axes: Sequence[Sequence[Any]], num_devices: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """(names, sizes) with the single -1 resolved to the devices left over."""
  names = tuple(str(a[0]) for a in axes)
  sizes = [int(a[1]) for a in axes]
  if len(set(names)) != len(names):
    raise ShardingError(f"mesh axes {names} repeat a name")
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ShardingError(f"mesh axes {list(zip(names, sizes))}: at most one size may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ShardingError(f"mesh axes {list(zip(names, sizes))}: sizes must be positive or -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ShardingError(
          f"mesh axes {list(zip(names, sizes))} do not divide {num_devices} devices"
      )
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ShardingError(
        f"mesh axes {list(zip(names, sizes))} need {math.prod(sizes)} devices, "
        f"{num_devices} are present"
    )
  return names, tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The mesh of `mesh_config.axes` over all (global) devices, every axis Auto."""
  devices = jax.devices() if devices is None else list(devices)
  names, sizes = mesh_shape(mesh_config.axes, len(devices))
  try:
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
  except NotImplementedError as e:
    # TPU devices: jax lays each mesh axis along whole physical axes of the slice's torus, so an
    # axis size must be a product of some of them (a v6e 16x16 takes 16 or 256, not 4 or 64).
    raise ShardingError(
        f"mesh axes {list(zip(names, sizes))} do not fit the slice's physical axes: each size "
        f"must be a product of some of them (jax: {str(e).split('. ')[0][:160]})"
    ) from None


def batch_axes(mesh: Mesh, mesh_config) -> tuple[str, ...]:
  axes = tuple(mesh_config.batch_axes)
  unknown = [a for a in axes if a not in mesh.axis_names]
  if unknown:
    raise ShardingError(f"mesh.batch_axes {unknown} are not mesh axes {mesh.axis_names}")
  return axes


def data_parallel_size(mesh: Mesh, mesh_config) -> int:
  """How many ways the global batch is split (the product of the batch axes' sizes)."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, mesh_config))


def batch_sharding(mesh: Mesh, mesh_config) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes, the rest whole."""
  return NamedSharding(mesh, P(batch_axes(mesh, mesh_config)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """'/'-joined key path of a pytree leaf, without NNX's trailing '/value'."""
  s = jax.tree_util.keystr(path, simple=True, separator="/")
  return s[: -len("/value")] if s.endswith("/value") else s


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int, axis: str) -> P:
  if fsdp_size <= 1:
    return P()
  # Largest dimension first; ties go to the last dimension (typically the output features).
  order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
  for i in order:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = axis
      return P(*spec)
  return P()


def spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh, fsdp_axis: str = "fsdp") -> P:
  """The PartitionSpec the first matching rule gives a leaf (replicated when none matches)."""
  for pattern, rule in rules:
    if re.search(pattern, path):
      if rule == "replicate":
        return P()
      if rule == "fsdp":
        if fsdp_axis not in mesh.axis_names:
          raise ShardingError(f"rule ({pattern!r}, 'fsdp') needs a mesh axis named {fsdp_axis!r}")
        return _fsdp_spec(tuple(shape), mesh.shape[fsdp_axis], fsdp_axis)
      raise ShardingError(f"unknown sharding rule {rule!r} for {pattern!r}; choose one of {RULES}")
  return P()


def tree_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for every leaf of a tree of arrays / ShapeDtypeStructs, by its path."""
  rules = [(str(p), str(r)) for p, r in rules]
  for pattern, rule in rules:
    if rule not in RULES:
      raise ShardingError(f"unknown sharding rule {rule!r} for {pattern!r}; choose one of {RULES}")
    re.compile(pattern)

  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, spec_for(path_str(path), shape, rules, mesh))

  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def describe(shardings) -> dict[str, str]:
  """{'path': 'PartitionSpec(...)'} of the sharded leaves, for the run's log."""
  out = {}
  for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    if isinstance(s, NamedSharding) and any(a is not None for a in s.spec):
      out[path_str(path)] = str(s.spec)
  return out


# ----------------------------------------------------------------------------- batch placement
# The one home of host batch -> device placement: the data pipeline produces host numpy rows
# and never imports the device side.

DEFAULT_BATCH_AXES = ("data", "fsdp")


def _batch_axes_sharding(mesh: Mesh, batch_axes: Sequence[str] | None) -> NamedSharding:
  """`batch_sharding` over the named axes the mesh has (absent ones are ignored)."""
  axes = tuple(
      a for a in (DEFAULT_BATCH_AXES if batch_axes is None else batch_axes) if a in mesh.axis_names
  )
  return batch_sharding(mesh, types.SimpleNamespace(batch_axes=axes))


def host_rows(mesh: Mesh, global_batch_size: int, batch_axes: Sequence[str] | None = None):
  """The rows of a global batch this process's devices hold on `mesh` (sorted int64 array).

  With the usual meshes these are the contiguous block [p*b, (p+1)*b) that the data iterators
  use by default; pass this as their `rows=` when a mesh gives a process non-contiguous rows.
  """
  sharding = _batch_axes_sharding(mesh, batch_axes)
  index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  rows = set()
  for (sl,) in index_map.values():
    rows.update(range(*sl.indices(global_batch_size)))
  return np.array(sorted(rows), np.int64)


def place_batch(batch, mesh: Mesh, batch_axes: Sequence[str] | None = None) -> dict[str, Any]:
  """Host batch (this process's rows) -> dict of global `jax.Array`s split on the batch axes.

  The global shape is inferred (local rows x processes for the usual meshes). Axes of
  `batch_axes` (default data and fsdp) that the mesh lacks are ignored.
  """
  sharding = _batch_axes_sharding(mesh, batch_axes)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
