"""The xMAE paper's comparison points, under the same code and data as xMAE.

* `PPGMAE` (configs/ppg_mae.py): a PPG-only masked autoencoder. Its PPG encoder is xMAE's PPG
  path (path.SinglePath: stem, patch embedding, positions, blocks, projection head) and its
  pretext is xMAE's MAE decoding (`SinglePath.decode_visible`) applied to PPG.
* `CLIP` (configs/clip.py): ECG<->PPG contrastive pretraining; one xMAE path encoder per
  modality on the whole signal, symmetric InfoNCE between their projected mean-pooled tokens.
* xMAE without the bridge is not a class: configs/xmae_nobridge.py selects XMAE with
  `model.use_cross_bridge=False`.

Every model exposes `embed(ppg=...) -> (B, latent)` with xMAE's latent size, so downstream
evaluation compares like with like.
"""

from __future__ import annotations

import chex
import jax
from flax import nnx

from xmae_jax.errors import XmaeError
from xmae_jax.models import contrastive
from xmae_jax.models import layers
from xmae_jax.models import losses
from xmae_jax.models import masking
from xmae_jax.models import path

Array = jax.Array


def _path_kwargs(config, depth: int) -> dict:
  """PathEncoder/SinglePath arguments from `config.model`, with `depth` blocks."""
  m = config.model
  return dict(
      seq_len=int(m.seq_len),
      patch_len=int(m.patch_len),
      d_model=m.d_model,
      num_heads=m.num_heads,
      depth=depth,
      stem_channels=m.stem_channels,
      stem_widths=tuple(m.stem_widths),
      dropout=m.dropout,
      latent_dim=int(m.latent_dim),
      dtype=layers.compute_dtype(config),
  )


class PPGMAE(nnx.Module):
  """PPG-only masked autoencoder with xMAE's PPG path (see configs/ppg_mae.py)."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m, k = config.model, config.masking
    masking.check_mode(k.mode)
    path.check_visible_positions(m.visible_positions)
    self.ppg_path = path.SinglePath(
        build_decoder=True,
        build_mask_loc=False,
        build_proj=True,
        rngs=rngs,
        **_path_kwargs(config, m.depth_ppg),
    )
    self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, m.d_model)))
    self.mask_mode, self.ratio_ppg = str(k.mode), float(k.ratio_ppg)
    self.visible_positions = str(m.visible_positions)
    self.w_ppg = float(config.loss.w_ppg)
    self.seq_len = int(m.seq_len)

  def __call__(self, ppg: Array, ppg_keep: Array, *, key: Array | None = None) -> dict[str, Array]:
    """ppg (B, L), ppg_keep (B, Nk) ascending visible patches -> {"ppg_reconstruction" (B, L),
    "ppg_mask" (B, L) 1 on masked samples}."""
    chex.assert_shape(ppg, (ppg.shape[0], self.seq_len))
    k_enc, k_dec = layers.split_keys(key, 2)
    ppg_path = self.ppg_path
    tokens = ppg_path.encoder.tokens(ppg, ppg_keep, positions=self.visible_positions, key=k_enc)
    return {
        "ppg_reconstruction": ppg_path.decode_visible(
            tokens, ppg_keep, self.mask_token[...], k_dec
        ),
        "ppg_mask": masking.sample_mask(ppg_keep, ppg_path.num_patches, ppg_path.encoder.patch_len),
    }

  def loss(
      self, batch: dict[str, Array], key: Array, *, mask_ratio: float | None = None
  ) -> tuple[Array, dict[str, Array]]:
    """Masked-waveform MSE on PPG; `mask_ratio` overrides masking.ratio_ppg."""
    ppg = batch["ppg"]
    k_mask, k_drop = jax.random.split(key)
    ratio = self.ratio_ppg if mask_ratio is None else float(mask_ratio)
    keep = masking.sample_keep_ids(
        k_mask, ppg.shape[0], self.ppg_path.num_patches, ratio, self.mask_mode
    )
    out = self(ppg, keep, key=k_drop)
    mse = losses.masked_mse(out["ppg_reconstruction"], ppg, out["ppg_mask"])
    total = self.w_ppg * mse
    return total, {"loss": total, "mse_ppg": mse}

  def embed(self, ppg: Array | None = None, ecg: Array | None = None) -> Array:
    if ppg is None or ecg is not None:
      raise ValueError("PPG-MAE embeds PPG only: pass ppg=(B, L)")
    return self.ppg_path.encoder(ppg)

  def encoder(self, modality: str = "ppg") -> path.PathEncoder:
    if modality != "ppg":
      raise XmaeError(f"PPG-MAE has no {modality!r} encoder (use 'ppg')")
    return self.ppg_path.encoder


class CLIP(nnx.Module):
  """ECG<->PPG contrastive pretraining with xMAE's path encoders (see configs/clip.py)."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m, l = config.model, config.loss
    contrastive.check_positives(l.positives)
    self.ppg_encoder = path.PathEncoder(rngs=rngs, **_path_kwargs(config, m.depth_ppg))
    self.ecg_encoder = path.PathEncoder(rngs=rngs, **_path_kwargs(config, m.depth_ecg))
    self.temperature = contrastive.Temperature(float(l.temperature), bool(l.learn_temperature))
    self.w_contrast = float(l.w_contrast)
    self.positives = str(l.positives)

  def loss(
      self, batch: dict[str, Array], key: Array, *, mask_ratio: float | None = None
  ) -> tuple[Array, dict[str, Array]]:
    """Symmetric InfoNCE between the ECG and PPG embeddings of the batch (no masking, so
    `mask_ratio` is ignored). Subject-level positives read batch["subject"] (B,)."""
    del mask_ratio
    k_ppg, k_ecg = jax.random.split(key)
    z_ppg = self.ppg_encoder.pool(self.ppg_encoder.tokens(batch["ppg"], key=k_ppg))
    z_ecg = self.ecg_encoder.pool(self.ecg_encoder.tokens(batch["ecg"], key=k_ecg))
    scale = self.temperature()
    nce = contrastive.info_nce(
        z_ecg, z_ppg, scale, subject=batch.get("subject"), positives=self.positives
    )
    total = self.w_contrast * nce
    return total, {"loss": total, "nce": nce, "temperature": 1.0 / scale}

  def embed(self, ppg: Array | None = None, ecg: Array | None = None) -> Array:
    """(B, latent): the projected embedding of the given modality; with both, their mean."""
    parts = [
        enc(x) for enc, x in ((self.ppg_encoder, ppg), (self.ecg_encoder, ecg)) if x is not None
    ]
    if not parts:
      raise ValueError("CLIP.embed needs ppg=(B, L) and/or ecg=(B, L)")
    return sum(parts) / len(parts)

  def encoder(self, modality: str = "ppg") -> path.PathEncoder:
    if modality == "ppg":
      return self.ppg_encoder
    if modality == "ecg":
      return self.ecg_encoder
    raise XmaeError(f"unknown modality {modality!r}; expected 'ppg' or 'ecg'")
