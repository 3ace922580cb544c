"""A small masked autoencoder that follows the models' contract, for fast trainer tests.

The trainer's properties (topology independence, exact resume, sharding rules) do not depend on
the architecture, only on the contract: `loss(batch, key, *, mask_ratio)` drawing per-example
masks (here with the real `xmae_jax.models.masking`) and dropout from `key`, BatchNorm statistics
updated in training mode. This model keeps those pieces and compiles far faster than xMAE's
convolutional stem; xMAE itself is trained by the single-device tests. Tests register it as
`models.REGISTRY["toy_mae"]` (`train_runner.register_toy_model`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from xmae_jax.models import masking


class ToyMAE(nnx.Module):
  """Reconstructs masked ECG patches from PPG patches and the visible ECG patches."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m = config.model
    self.seq_len, self.patch_len = int(m.seq_len), int(m.patch_len)
    self.num_patches = self.seq_len // self.patch_len
    self.ratio = float(config.masking.ratio_ecg)
    self.mode = str(config.masking.mode)
    self.rate = float(m.dropout)
    d = int(m.d_model)
    # No bias: BatchNorm would cancel it, leaving a zero gradient that Adam turns into
    # lr-sized steps of rounding noise (which differs between topologies).
    self.embed_ppg = nnx.Linear(self.patch_len, d, use_bias=False, rngs=rngs)
    self.embed_ecg = nnx.Linear(self.patch_len, d, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (self.num_patches, d)))
    self.mask_token = nnx.Param(jnp.zeros((d,)))
    self.norm = nnx.BatchNorm(d, momentum=0.9, rngs=rngs)
    self.hidden = nnx.Linear(d, d, rngs=rngs)
    self.head = nnx.Linear(d, self.patch_len, rngs=rngs)

  def __call__(self, ppg, ecg, ecg_keep, *, key=None):
    b = ecg.shape[0]
    visible = masking.mask_from_keep(ecg_keep, self.num_patches) == 0
    patches = lambda x: x.reshape(b, self.num_patches, self.patch_len)
    h = (
        self.embed_ppg(patches(ppg))
        + self.pos[...]
        + jnp.where(visible[..., None], self.embed_ecg(patches(ecg)), self.mask_token[...])
    )
    h = self.norm(h.reshape(b * self.num_patches, -1)).reshape(h.shape)
    h = jax.nn.gelu(self.hidden(h))
    if not self.norm.use_running_average and self.rate > 0:
      keep = jax.random.bernoulli(key, 1.0 - self.rate, h.shape)
      h = jnp.where(keep, h / (1.0 - self.rate), 0.0)
    rec = self.head(h).reshape(b, self.seq_len)
    return {
        "ecg_reconstruction": rec,
        "ppg_embedding": h.mean(axis=1),
        "ecg_mask": masking.sample_mask(ecg_keep, self.num_patches, self.patch_len),
    }

  def loss(self, batch, key, *, mask_ratio=None):
    ratio = self.ratio if mask_ratio is None else float(mask_ratio)
    k_mask, k_drop = jax.random.split(key)
    b = batch["ecg"].shape[0]
    keep = masking.sample_keep_ids(k_mask, b, self.num_patches, ratio, self.mode)
    out = self(batch["ppg"], batch["ecg"], keep, key=k_drop)
    mask = out["ecg_mask"]
    loss = jnp.sum(mask * jnp.square(out["ecg_reconstruction"] - batch["ecg"])) / jnp.sum(mask)
    return loss, {"loss": loss, "mse_ecg": loss}

  def embed(self, ppg=None, ecg=None):
    raise NotImplementedError("ToyMAE is for trainer tests only")
