"""xmae-jax: ECG+PPG biosignal foundation-model pretraining in JAX/Flax."""
__version__ = "0.1.0"


def load_encoder(path, **kwargs):
  """Loads an exported encoder package (see xmae_jax.evaluation.encoder)."""
  from xmae_jax.evaluation.encoder import load_encoder as _load
  return _load(path, **kwargs)
