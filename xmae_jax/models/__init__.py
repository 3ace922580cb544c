"""Model registry: `build(config, rngs)` picks the model named by `config.model.name`.

A new model is one file here and one file in configs/; add its name below.
"""

from __future__ import annotations

import importlib

from xmae_jax.errors import XmaeError

# name -> "module:Class"; each class is constructed as Class(config, rngs=rngs).
REGISTRY = {
    "xmae": "xmae_jax.models.xmae:XMAE",
    "m2ae": "xmae_jax.models.m2ae:M2AE",
    "ppg_mae": "xmae_jax.models.baselines:PPGMAE",
    "clip": "xmae_jax.models.baselines:CLIP",
}


class UnknownModelError(XmaeError):
  """`config.model.name` is not in REGISTRY (the trainer tells it apart to list the names)."""


def model_class(name: str):
  if name not in REGISTRY:
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
  module, cls = REGISTRY[name].split(":")
  return getattr(importlib.import_module(module), cls)


def build(config, rngs):
  """The model for `config` (a full ConfigDict with model/masking/loss/train sections)."""
  return model_class(config.model.name)(config, rngs=rngs)
