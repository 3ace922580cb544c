"""The probes' settings and error, in one place: the library's defaults are the command lines'.

Light on purpose (no scikit-learn, no JAX), so that a tool's --help can show these defaults.
"""

from __future__ import annotations

import dataclasses

from xmae_jax.errors import XmaeError

PROTOCOLS = ("linear", "xmae")


class ProbeError(XmaeError):
  """Inputs a probe cannot score (too few subjects, a single class, NaN features, ...)."""


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
  outer_folds: int = 5
  inner_folds: int = 3
  seed: int = 0
  n_bootstrap: int = 1000
  c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # logistic C = 1/lambda
  alpha_grid: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # ridge alpha
  max_iter: int = 2000


@dataclasses.dataclass(frozen=True)
class XMAEProbeConfig:
  folds: int = 5
  seed: int = 77
  lr: float = 1e-3
  epochs: int = 7
  batch_size: int = 2048
  patience: int = 5
  val_fraction: float = 1 / 8
  group_folds: bool = True  # subject-level folds (False: stratified segment-level folds)


# The defaults of every subject-bootstrap and fold seed outside a probe run (paired comparisons,
# retention), so that they are the linear probe's.
LINEAR_DEFAULTS = LinearProbeConfig()
