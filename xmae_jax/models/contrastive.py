"""Symmetric InfoNCE (CLIP) between two batches of embeddings, and its temperature.

Used by M2AE (ECG-only vs PPG-only fingerprints, plus augmented views) and by the CLIP
baseline. Two choices of positives (M2AE notes §11: the paper's wording allows both):

* "segment": row i of `a` and row i of `b` (the time-aligned pair of one segment) are the
  only positives; every other row is a negative. This is CLIP's loss.
* "subject": every pair (i, j) whose subject ids are equal is a positive. Each anchor's loss
  averages -log p over its positives (SupCon's "L_out" form, Khosla et al. 2020), so with all
  subjects distinct it equals the segment-level loss exactly.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmae_jax.errors import XmaeError

POSITIVES = ("segment", "subject")


class MissingSubjectError(XmaeError):
  """Subject-level positives were asked for but the batch has no "subject" ids."""


def check_positives(positives: str) -> str:
  """`positives` if it is one of POSITIVES; else the one error models and the loss raise."""
  if positives not in POSITIVES:
    raise XmaeError(f"loss.positives {positives!r}: expected one of {', '.join(POSITIVES)}")
  return positives


def positives_mask(batch_size: int, subject=None, positives: str = "segment") -> jax.Array:
  """(B, B) float mask, 1 where (i, j) is a positive pair."""
  if check_positives(positives) == "segment":
    return jnp.eye(batch_size, dtype=jnp.float32)
  if subject is None:  # "subject": positives share a subject id
    raise MissingSubjectError(
        'loss.positives="subject" needs batch["subject"] (int (B,)); the data pipeline '
        'emits it with data.with_subject=True, or use positives="segment"'
    )
  chex.assert_shape(subject, (batch_size,))
  return (subject[:, None] == subject[None, :]).astype(jnp.float32)


def _multi_positive_ce(logits: jax.Array, pos: jax.Array) -> jax.Array:
  """Mean over rows of -(1/|P_i|) sum_{j in P_i} log softmax(logits_i)_j."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.mean(-jnp.sum(pos * logp, axis=-1) / jnp.sum(pos, axis=-1))


def info_nce(
    a: jax.Array, b: jax.Array, logit_scale, *, subject=None, positives: str = "segment"
) -> jax.Array:
  """Symmetric InfoNCE between L2-normalized rows of a and b (both (B, D)).

  logit_scale is 1/temperature. Returns the mean of the a->b and b->a cross entropies.
  """
  chex.assert_rank([a, b], 2)
  chex.assert_equal_shape([a, b])
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  logits = logit_scale * (a @ b.T)
  pos = positives_mask(a.shape[0], subject, positives)
  return 0.5 * (_multi_positive_ce(logits, pos) + _multi_positive_ce(logits.T, pos.T))


class Temperature(nnx.Module):
  """CLIP's temperature: learnable log(1/tau) clipped at 1/tau <= max_scale, or a constant.

  CLIP initializes tau = 0.07 and clips the scale at 100 so training cannot blow it up.
  """

  def __init__(self, init: float = 0.07, learnable: bool = True, max_scale: float = 100.0):
    if not init > 0:
      raise XmaeError(f"loss.temperature must be > 0, got {init}")
    self.learnable = learnable
    # A fixed temperature is a plain float (static), so no optimizer ever sees it.
    self.log_scale = (
        nnx.Param(jnp.asarray(math.log(1.0 / init), jnp.float32))
        if learnable
        else math.log(1.0 / init)
    )
    self.max_log_scale = math.log(max_scale)

  def __call__(self) -> jax.Array:
    """The logit scale 1/tau."""
    log_scale = self.log_scale[...] if self.learnable else jnp.float32(self.log_scale)
    return jnp.exp(jnp.minimum(log_scale, self.max_log_scale))
