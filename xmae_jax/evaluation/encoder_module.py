"""The sub-module of a model that an encoder package holds, and how it is found.

`encoder_module(model, modality)` is what `xmae-export` writes and `encoder.Encoder` runs: a
modality's encoder (`model.encoder(modality)`), or for M2AE's "ppg+ecg" the `JointFingerprint`
(both modality encoders and the shared bottleneck, under the model's own attribute names, so
tensor names match the training checkpoint's). `abstract_encoder` is the same with shape-only
variables, the target a package's weights are restored into. `parse_modalities` and
`modality_name` turn modality lists into the name of the encoder that takes them ("ppg+ecg").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax import models
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import package as package_lib
from xmae_jax.models import m2ae


class EncoderError(XmaeError):
  """A model or package without the encoder asked for (no such modality)."""


def parse_modalities(text: str) -> tuple[str, ...]:
  """ "ppg", "ecg", "ppg,ecg" (or "ecg,ppg", "ppg+ecg") -> the modalities in MODALITIES order."""
  names = [m.strip() for m in str(text).replace("+", ",").split(",") if m.strip()]
  bad = [m for m in names if m not in package_lib.MODALITIES]
  if bad or not names:
    raise EncoderError(f"modalities {text!r}: expected ppg, ecg or ppg,ecg")
  return tuple(m for m in package_lib.MODALITIES if m in names)


def modality_name(modalities) -> str:
  """("ppg",) -> "ppg"; ("ppg", "ecg") -> "ppg+ecg" (the encoder that takes them)."""
  return "+".join(m for m in package_lib.MODALITIES if m in modalities)


class JointFingerprint(nnx.Module):
  """M2AE's fingerprint from PPG, ECG or both: `fp(ppg=(B, L), ecg=(B, L)) -> (B, latent)`, the
  mean of the shared bottleneck's latent tokens over the given modalities' tokens, as
  `M2AE.fingerprint`. Holds the model's two modality encoders and its bottleneck under the
  model's own attribute names (so tensor names match the training checkpoint's), not the
  decoders."""

  def __init__(self, model):
    self.ecg_encoder = model.ecg_encoder
    self.ppg_encoder = model.ppg_encoder
    self.bottleneck = model.bottleneck

  def __call__(self, ppg=None, ecg=None):
    given = {"ppg": ppg, "ecg": ecg}
    encoders = {"ppg": self.ppg_encoder, "ecg": self.ecg_encoder}
    # The model's token order (m2ae.MODALITIES), so both-modality fingerprints match it exactly.
    parts = [
        (encoders[m].tokens(given[m], positions="true"), m)
        for m in m2ae.MODALITIES
        if given[m] is not None
    ]
    return jnp.mean(self.bottleneck(parts), axis=1)


def count_parameters(module) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


def encoder_module(model, modality: str):
  """The model's exported sub-module for `modality` ("ppg+ecg": M2AE's `JointFingerprint`),
  with a clear error if it has none."""
  if modality == package_lib.JOINT:
    if not isinstance(model, m2ae.M2AE):
      raise EncoderError(
          f"model {type(model).__name__} has no joint {package_lib.JOINT} fingerprint (only "
          "M2AE has one): use modality ppg or ecg"
      )
    return JointFingerprint(model)
  package_lib.modalities_of(modality)  # one line for an unknown modality name
  try:
    return model.encoder(modality)
  except (ValueError, KeyError, NotImplementedError) as e:
    raise EncoderError(f"model {type(model).__name__} has no {modality} encoder ({e})") from None


def abstract_encoder(config, modality: str):
  """The encoder sub-module of `config`'s model with abstract (shape-only) variables."""
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  return encoder_module(model, modality)
