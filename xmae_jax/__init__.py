"""xmae-jax: ECG+PPG biosignal foundation-model pretraining in JAX/Flax."""

from xmae_jax.version import __version__

__all__ = ["__version__", "load_encoder"]


def load_encoder(path, **kwargs):
  """Loads an exported encoder package (see xmae_jax.evaluation.encoder)."""
  # Imported here: `import xmae_jax` (and every `xmae_jax.X`) must not load the evaluation layer.
  from xmae_jax.evaluation.encoder import load_encoder as _load

  return _load(path, **kwargs)
