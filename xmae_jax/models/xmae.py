"""xMAE: masked ECG reconstructed from fully visible PPG through directional cross-attention.

A faithful port of the reference (hzhou3/xMAE, `utils/model_arch/xmae.py` at 7a0d24e), described
layer by layer below. Forward pass (bridge on, the default):

  1. PPG (fully visible unless `masking.ratio_ppg` > 0) -> ppg_path.encoder.tokens -> (B, N, D).
  2. The visible ECG patches (`ecg_keep`, ascending) are concatenated into one short waveform,
     encoded by ecg_path.encoder with positions pos[0..Nk-1] (reference quirk; switch
     `model.visible_positions="true"` uses pos[ecg_keep]) -> (B, Nk, D).
  3. Query: those tokens minus the positions they got, scattered back to their true patch
     indices over the learned per-position `mask_loc_table`, plus pos[0..N-1] everywhere.
  4. Bridge: `depth_bridge` cross-attention blocks, query = ECG, key/value = PPG; each update is
     q <- q + alpha * (block(q, ppg) - q) with alpha = 1. PPG tokens are never updated.
  5. ecg_path: one pre-LN block (MLP ratio 2) on the full-length bridged tokens (no positions
     re-added), then ConvTranspose (kernel = stride = patch_len) -> ECG (B, L).
  6. ppg_embedding = LN + Linear of the mean of the PPG tokens. No loss reaches it, so the
     projection stays at its initialization during pretraining (as in the reference).

With `model.use_cross_bridge=False` the ECG path decodes its visible tokens MAE-style
(shared `mask_token` at masked indices, positions added) without seeing PPG.

`model.build_unused=True` (default) also builds what the reference builds but never calls (PPG
dec_block/decoder/mask_loc_table, ECG projection head, the reverse bridge `ppg2ecg`,
`mask_token` when the bridge is on), so the parameter count (6,481,930 on the paper preset)
and the state-dict names match the reference.
"""

from __future__ import annotations

import chex
import jax
from flax import nnx

from xmae_jax.models import layers
from xmae_jax.models import losses
from xmae_jax.models import masking
from xmae_jax.models import path


class XMAE(nnx.Module):
  """xMAE built from a full config (sections model, masking, loss, train)."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m = config.model
    path.check_visible_positions(m.visible_positions)
    masking.check_mode(config.masking.mode)
    dtype = layers.compute_dtype(config)
    build_unused = bool(m.build_unused)
    self.use_cross_bridge = bool(m.use_cross_bridge)
    self.visible_positions = str(m.visible_positions)
    self.seq_len, self.patch_len = int(m.seq_len), int(m.patch_len)
    self.num_patches = self.seq_len // self.patch_len
    self.latent_dim = int(m.latent_dim)
    self.mask_mode = str(config.masking.mode)
    self.ratio_ecg = float(config.masking.ratio_ecg)
    self.ratio_ppg = float(config.masking.ratio_ppg)
    self.w_ecg = float(config.loss.w_ecg)
    self.w_ppg = float(config.loss.w_ppg)
    decode_ppg = self.w_ppg > 0 and self.ratio_ppg > 0

    common = dict(
        seq_len=self.seq_len,
        patch_len=self.patch_len,
        d_model=m.d_model,
        num_heads=m.num_heads,
        stem_channels=m.stem_channels,
        stem_widths=tuple(m.stem_widths),
        dropout=m.dropout,
        latent_dim=self.latent_dim,
        dtype=dtype,
    )
    self.ppg_path = path.SinglePath(
        depth=m.depth_ppg,
        build_decoder=build_unused or decode_ppg,
        build_mask_loc=build_unused,
        build_proj=True,
        rngs=rngs,
        **common,
    )
    self.ecg_path = path.SinglePath(
        depth=m.depth_ecg,
        build_decoder=True,
        build_mask_loc=build_unused or self.use_cross_bridge,
        build_proj=build_unused,
        rngs=rngs,
        **common,
    )
    cross = lambda: path.CrossAttentionBlock(  # noqa: E731
        m.d_model, m.num_heads, dropout=m.dropout, dtype=dtype, rngs=rngs
    )
    if self.use_cross_bridge:
      self.bridge = nnx.List([cross() for _ in range(m.depth_bridge)])  # ecg2ppg
      self.bridge_unused = (
          nnx.List([cross() for _ in range(m.depth_bridge)]) if build_unused else None  # ppg2ecg
      )
    else:
      self.bridge = self.bridge_unused = None
    needs_mask_token = build_unused or not self.use_cross_bridge or decode_ppg
    self.mask_token = (
        nnx.Param(layers.normal_init(rngs.params(), (1, 1, m.d_model), 0.02))
        if needs_mask_token
        else None
    )

  # -------------------------------------------------------------------------------------------
  def __call__(
      self,
      ppg: jax.Array,
      ecg: jax.Array,
      ecg_keep: jax.Array,
      *,
      ppg_keep: jax.Array | None = None,
      key: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """Forward pass.

    Args:
      ppg, ecg: (B, L) float waveforms.
      ecg_keep: (B, Nk) int, ascending indices of the visible ECG patches.
      ppg_keep: (B, Nk_ppg) visible PPG patches, or None for fully visible PPG (the reference).
      key: dropout key; required in training mode (`model.train()`) when dropout > 0.

    Returns a dict: `ecg_reconstruction` (B, L) float32 (the whole ECG), `ppg_embedding`
    (B, latent) float32, `ecg_mask` (B, L) float32 (1 on masked samples), and with PPG masking
    and loss.w_ppg > 0 also `ppg_reconstruction` and `ppg_mask`.
    """
    b = ecg.shape[0]
    chex.assert_shape([ppg, ecg], (b, self.seq_len))
    chex.assert_rank(ecg_keep, 2)
    chex.assert_axis_dimension(ecg_keep, 0, b)
    k_ppg, k_ecg, k_bridge, k_dec, k_ppg_dec = layers.split_keys(key, 5)
    pos_mode = self.visible_positions

    t_ppg = self.ppg_path.encoder.tokens(ppg, ppg_keep, positions=pos_mode, key=k_ppg)
    t_ecg = self.ecg_path.encoder.tokens(ecg, ecg_keep, positions=pos_mode, key=k_ecg)
    if self.use_cross_bridge:
      q = self.ecg_path.query_tokens(t_ecg, ecg_keep, positions=pos_mode)
      for blk, k in zip(self.bridge, layers.split_keys(k_bridge, len(self.bridge))):
        alpha = 1.0  # the reference's default bridge strength
        q = q + alpha * (blk(q, t_ppg, k) - q)
      ecg_rec = self.ecg_path.decode_tokens(q, k_dec)
    else:
      ecg_rec = self.ecg_path.decode_visible(t_ecg, ecg_keep, self.mask_token[...], k_dec)
    chex.assert_shape(ecg_rec, (b, self.seq_len))

    out = {
        "ecg_reconstruction": ecg_rec,
        "ppg_embedding": self.ppg_path.encoder.pool(t_ppg),
        "ecg_mask": masking.sample_mask(ecg_keep, self.num_patches, self.patch_len),
    }
    if ppg_keep is not None and self.w_ppg > 0:  # PPG reconstruction only when it is trained
      out["ppg_reconstruction"] = self.ppg_path.decode_visible(
          t_ppg, ppg_keep, self.mask_token[...], k_ppg_dec
      )
      out["ppg_mask"] = masking.sample_mask(ppg_keep, self.num_patches, self.patch_len)
    return out

  # -------------------------------------------------------------------------------------------
  def sample_masks(
      self, key: jax.Array, batch: int, *, mask_ratio: float | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    """(ecg_keep (B, Nk), ppg_keep (B, Nk_ppg) or None) drawn per example from `key`."""
    k_ecg, k_ppg = jax.random.split(key)
    ratio = self.ratio_ecg if mask_ratio is None else float(mask_ratio)
    ecg_keep = masking.sample_keep_ids(k_ecg, batch, self.num_patches, ratio, self.mask_mode)
    ppg_keep = (
        masking.sample_keep_ids(k_ppg, batch, self.num_patches, self.ratio_ppg, self.mask_mode)
        if self.ratio_ppg > 0
        else None
    )
    return ecg_keep, ppg_keep

  def loss(
      self, batch: dict[str, jax.Array], key: jax.Array, *, mask_ratio: float | None = None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked-waveform MSE of the reference (ECG; plus PPG when masked and loss.w_ppg > 0).

    Masks are drawn per example from `key` (`mask_ratio`, a static Python float, overrides
    masking.ratio_ecg: the curriculum's level). Returns (loss, metrics) with metrics `loss`,
    `mse_ecg` (and `mse_ppg`).
    """
    ppg, ecg = batch["ppg"], batch["ecg"]
    k_mask, k_drop = jax.random.split(key)
    ecg_keep, ppg_keep = self.sample_masks(k_mask, ecg.shape[0], mask_ratio=mask_ratio)
    out = self(ppg, ecg, ecg_keep, ppg_keep=ppg_keep, key=k_drop)
    mse_ecg = losses.masked_mse(out["ecg_reconstruction"], ecg, out["ecg_mask"])
    total = self.w_ecg * mse_ecg
    metrics = {"mse_ecg": mse_ecg}
    if "ppg_reconstruction" in out:
      mse_ppg = losses.masked_mse(out["ppg_reconstruction"], ppg, out["ppg_mask"])
      total = total + self.w_ppg * mse_ppg
      metrics["mse_ppg"] = mse_ppg
    metrics["loss"] = total
    return total, metrics

  def embed(self, ppg: jax.Array | None = None, ecg: jax.Array | None = None) -> jax.Array:
    """The downstream embedding: xMAE transfers the PPG encoder, so (B, L) PPG -> (B, latent)."""
    if ppg is None:
      raise ValueError("xMAE embeds PPG only: pass ppg=(B, L)")
    return self.ppg_path.encoder(ppg)

  def encoder(self, modality: str = "ppg") -> path.PathEncoder:
    """The exportable encoder, `enc(x (B, L)) -> (B, latent)`. xMAE's transferable one is
    "ppg"; "ecg" exists only with build_unused (its head never trains, as in the reference)."""
    if modality == "ppg":
      return self.ppg_path.encoder
    if modality == "ecg" and self.ecg_path.encoder.proj is not None:
      return self.ecg_path.encoder
    raise ValueError(f"xMAE has no exportable {modality!r} encoder (use 'ppg')")

  def reconstruct_ecg(
      self, ppg: jax.Array, ecg: jax.Array, key: jax.Array, *, mask_ratio: float | None = None
  ) -> dict[str, jax.Array]:
    """The ECG reconstructed from fully visible PPG and an ECG mask drawn from `key` with the
    model's masking mode (`mask_ratio` overrides masking.ratio_ecg), for figures: so a caller
    needs no knowledge of this model's masks. Returns `ecg_reconstruction` (B, L) and
    `ecg_masked` (B, L) bool, True on masked samples."""
    ratio = self.ratio_ecg if mask_ratio is None else float(mask_ratio)
    ecg_keep = masking.sample_keep_ids(key, ecg.shape[0], self.num_patches, ratio, self.mask_mode)
    out = self(ppg, ecg, ecg_keep)
    return {"ecg_reconstruction": out["ecg_reconstruction"], "ecg_masked": out["ecg_mask"] > 0}
