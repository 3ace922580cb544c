"""Reconstruction losses shared by the masked-autoencoder models."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over the masked samples of the whole batch (float32 scalar).

  sum(mask * (pred - target)^2) / max(sum(mask), 1), as the reference's masked-waveform loss:
  the normalization is global over the batch's masked samples, not per example.
  """
  pred, target, mask = (a.astype(jnp.float32) for a in (pred, target, mask))
  return jnp.sum(mask * jnp.square(pred - target)) / jnp.maximum(jnp.sum(mask), 1.0)
