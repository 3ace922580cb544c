"""M2AE ("Biosignal Fingerprinting"): modality encoders, a shared bottleneck, dual decoders.

Design and every assumption: configs/m2ae.py (A1-A11). Data flow, B examples, N patches:

  ECG (B, L) --ecg_encoder--> tokens ┐                      ┌─ ecg_decoder --> ECG (B, L)
                                      ├─ shared bottleneck ─┤
  PPG (B, L) --ppg_encoder--> tokens ┘  (+ modality embed,  └─ ppg_decoder --> PPG (B, L)
                                         shared blocks, LN,
                                         Linear -> latent)   mean over tokens = fingerprint

* Encoders are xMAE's path encoders (`path.PathEncoder`, no projection head): the visible
  patches of a signal are encoded with their true positions; all N when nothing is masked.
* The bottleneck takes the tokens that are present (ECG, PPG or both), so the fingerprint of
  one modality is computed from that modality alone.
* A decoder reads the latent tokens that are present (any modality, at their patch positions)
  together with N query tokens of its own modality and writes the whole waveform.

Training (`loss`): complementary masks (every patch visible in exactly one modality); each
encoder runs once on its visible patches; the bottleneck runs on both modalities' tokens (masked
MSE on both signals) and on each modality's alone (whole-signal cross-modal reconstruction from
that modality; symmetric InfoNCE between the ECG-only and PPG-only fingerprints; InfoNCE between
each modality's fingerprint and an augmented view's). Terms whose weight is 0 are not computed.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmae_jax.errors import XmaeError
from xmae_jax.models import contrastive
from xmae_jax.models import layers
from xmae_jax.models import losses
from xmae_jax.models import masking
from xmae_jax.models import path

Array = jax.Array
MODALITIES = ("ecg", "ppg")  # index = modality id in the learned modality embeddings


def _modality_id(name: str) -> int:
  if name not in MODALITIES:
    raise XmaeError(f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}")
  return MODALITIES.index(name)


def augment_view(
    key: Array, x: Array, *, scale_range: Sequence[float], noise_std: float, max_shift: int
) -> Array:
  """A second view of a (B, L) batch for augmentation positives (A9): per example an amplitude
  factor U(scale_range), a time shift of up to +-max_shift samples (vacated edge = edge value,
  as the pipeline's shift) and Gaussian noise of std noise_std."""
  b, length = x.shape
  k_scale, k_shift, k_noise = jax.random.split(key, 3)
  lo, hi = scale_range
  scale = jax.random.uniform(k_scale, (b, 1), x.dtype, lo, hi)
  shift = jax.random.randint(k_shift, (b, 1), -max_shift, max_shift + 1)
  src = jnp.clip(jnp.arange(length)[None, :] - shift, 0, length - 1)
  shifted = jnp.take_along_axis(x, src, axis=1)
  return shifted * scale + noise_std * jax.random.normal(k_noise, x.shape, x.dtype)


def complementary_keep_ids(
    key: Array, batch: int, num_patches: int, ratio_ecg: float, mode: str
) -> tuple[Array, Array]:
  """Complementary masks (A6): (ecg_keep (B, Nk), ppg_keep (B, N - Nk)), both ascending. The
  ECG mask is drawn per example (xMAE's masking modes) and PPG keeps exactly the patches ECG
  masks, so every patch is visible in exactly one modality."""
  ecg_keep = masking.sample_keep_ids(key, batch, num_patches, ratio_ecg, mode)
  ppg_mask = 1 - masking.mask_from_keep(ecg_keep, num_patches)
  return ecg_keep, masking.keep_ids(ppg_mask, num_patches - ecg_keep.shape[1])


class Bottleneck(nnx.Module):
  """Shared bottleneck (A4): tokens + modality embedding -> shared pre-LN blocks -> LN ->
  Linear(d_model -> latent). Input: a list of (tokens (B, n_i, D), modality name)."""

  def __init__(
      self,
      *,
      d_model: int,
      num_heads: int,
      depth: int,
      latent_dim: int,
      dropout: float,
      dtype,
      rngs: nnx.Rngs,
  ):
    self.modality_embed = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (len(MODALITIES), d_model))
    )
    self.blocks = nnx.List(
        [
            path.TransformerBlock(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
            for _ in range(depth)
        ]
    )
    self.norm = layers.LayerNorm(d_model, dtype=dtype)
    self.proj = layers.Dense(d_model, latent_dim, dtype=dtype, rngs=rngs)

  def __call__(self, parts: Sequence[tuple[Array, str]], key: Array | None = None) -> Array:
    """-> latent tokens (B, sum n_i, latent) float32, in the order of `parts`."""
    embed = self.modality_embed[...]
    x = jnp.concatenate(
        [t + embed[_modality_id(name)].astype(t.dtype) for t, name in parts], axis=1
    )
    for blk, k in zip(self.blocks, layers.split_keys(key, len(self.blocks))):
      x = blk(x, k)
    return self.proj(self.norm(x)).astype(jnp.float32)


class Decoder(nnx.Module):
  """One modality's decoder (A5): [latent tokens -> Linear(latent -> D) + decoder position of
  their patch + source-modality embedding ; N queries = mask token + position + this decoder's
  modality embedding] -> pre-LN blocks (MLP ratio from the config) -> the queries ->
  transposed-convolution head (xMAE's WaveformDecoder) -> (B, L)."""

  def __init__(
      self,
      modality: str,
      *,
      num_patches: int,
      patch_len: int,
      latent_dim: int,
      d_model: int,
      num_heads: int,
      depth: int,
      mlp_ratio: float,
      dropout: float,
      dtype,
      rngs: nnx.Rngs,
  ):
    self.modality_id = _modality_id(modality)
    self.num_patches = num_patches
    self.embed = layers.Dense(latent_dim, d_model, dtype=dtype, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_patches, d_model)))
    self.modality_embed = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (len(MODALITIES), d_model))
    )
    self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d_model,)))
    self.blocks = nnx.List(
        [
            path.TransformerBlock(
                d_model, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, dtype=dtype, rngs=rngs
            )
            for _ in range(depth)
        ]
    )
    self.norm = layers.LayerNorm(d_model, dtype=dtype)
    self.head = layers.WaveformDecoder(d_model, patch_len, 1, dtype=dtype, rngs=rngs)

  def __call__(self, latent: Array, ids: Array, source: Array, key: Array | None = None) -> Array:
    """latent (B, T, latent), ids (B, T) patch index of each token, source (T,) modality id of
    each token -> the whole waveform (B, L) float32."""
    b, t, _ = latent.shape
    chex.assert_shape(ids, (b, t))
    chex.assert_shape(source, (t,))
    pos, mod = self.pos[...], self.modality_embed[...]
    context = self.embed(latent)
    context = context + (jnp.take(pos, ids, axis=0) + mod[source][None]).astype(context.dtype)
    queries = self.mask_token[...] + pos + mod[self.modality_id]
    queries = jnp.broadcast_to(queries.astype(context.dtype)[None], (b,) + queries.shape)
    x = jnp.concatenate([context, queries], axis=1)
    for blk, k in zip(self.blocks, layers.split_keys(key, len(self.blocks))):
      x = blk(x, k)
    return self.head(self.norm(x[:, t:]))[..., 0]


class FingerprintEncoder(nnx.Module):
  """The exportable single-modality encoder: `enc(x (B, L)) -> (B, latent)`, the modality's
  path encoder, then the shared bottleneck, then the mean over tokens (shares M2AE's modules)."""

  def __init__(self, encoder: path.PathEncoder, bottleneck: Bottleneck, modality: str):
    self.path = encoder
    self.bottleneck = bottleneck
    self.modality = modality

  def __call__(self, x: Array) -> Array:
    return jnp.mean(self.bottleneck([(self.path.tokens(x), self.modality)]), axis=1)


class M2AE(nnx.Module):
  """M2AE built from a full config (sections model, masking, loss, train)."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m, k, l = config.model, config.masking, config.loss
    masking.check_mode(k.mode)
    contrastive.check_positives(l.positives)
    dtype = layers.compute_dtype(config)
    self.seq_len, self.patch_len = int(m.seq_len), int(m.patch_len)
    self.num_patches = self.seq_len // self.patch_len
    self.latent_dim = int(m.latent_dim)
    self.mask_mode, self.ratio_ecg = str(k.mode), float(k.ratio_ecg)
    self.weights = {
        name: float(l[name])
        for name in ("w_ecg", "w_ppg", "w_cross_ecg", "w_cross_ppg", "w_contrast", "w_augment")
    }
    self.positives = str(l.positives)
    self.view = dict(
        scale_range=tuple(l.view.scale_range),
        noise_std=float(l.view.noise_std),
        max_shift=int(l.view.max_shift),
    )

    def path_encoder(depth):
      return path.PathEncoder(
          seq_len=self.seq_len,
          patch_len=self.patch_len,
          d_model=m.d_model,
          num_heads=m.num_heads,
          depth=depth,
          stem_channels=m.stem_channels,
          stem_widths=tuple(m.stem_widths),
          dropout=m.dropout,
          latent_dim=self.latent_dim,
          build_proj=False,
          dtype=dtype,
          rngs=rngs,
      )

    def decoder(modality):
      return Decoder(
          modality,
          num_patches=self.num_patches,
          patch_len=self.patch_len,
          latent_dim=self.latent_dim,
          d_model=m.d_model,
          num_heads=m.num_heads,
          depth=m.depth_decoder,
          mlp_ratio=m.decoder_mlp_ratio,
          dropout=m.dropout,
          dtype=dtype,
          rngs=rngs,
      )

    self.ecg_encoder = path_encoder(m.depth_ecg)
    self.ppg_encoder = path_encoder(m.depth_ppg)
    self.bottleneck = Bottleneck(
        d_model=m.d_model,
        num_heads=m.num_heads,
        depth=m.depth_shared,
        latent_dim=self.latent_dim,
        dropout=m.dropout,
        dtype=dtype,
        rngs=rngs,
    )
    self.ecg_decoder = decoder("ecg")
    self.ppg_decoder = decoder("ppg")
    self.temperature = contrastive.Temperature(float(l.temperature), bool(l.learn_temperature))

  # -------------------------------------------------------------------------------------------
  def _path(self, modality: str) -> path.PathEncoder:
    return {"ecg": self.ecg_encoder, "ppg": self.ppg_encoder}[modality]

  def _decoder(self, modality: str) -> Decoder:
    return {"ecg": self.ecg_decoder, "ppg": self.ppg_decoder}[modality]

  def complementary_masks(
      self, key: Array, batch: int, *, mask_ratio: float | None = None
  ) -> tuple[Array, Array]:
    """`complementary_keep_ids` with the config's mode and ratio (`mask_ratio` overrides it)."""
    ratio = self.ratio_ecg if mask_ratio is None else float(mask_ratio)
    return complementary_keep_ids(key, batch, self.num_patches, ratio, self.mask_mode)

  def _tokens(
      self, name: str, x: Array, ids_keep: Array | None, key: Array | None
  ) -> tuple[Array, Array, Array]:
    """One modality's encoder on the patches `ids_keep` (B, Nk) of x (B, L) (all when None):
    (tokens (B, n, D), patch ids (B, n), source modality ids (n,))."""
    b = x.shape[0]
    chex.assert_shape(x, (b, self.seq_len))
    tokens = self._path(name).tokens(x, ids_keep, positions="true", key=key)
    n = tokens.shape[1]
    ids = (
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        if ids_keep is None
        else ids_keep.astype(jnp.int32)
    )
    return tokens, ids, jnp.full((n,), _modality_id(name), jnp.int32)

  def _bottleneck(
      self, encoded: Sequence[tuple[str, tuple[Array, Array, Array]]], key: Array | None
  ) -> tuple[Array, Array, Array]:
    """Bottleneck over [(name, (tokens, ids, source)), ...] -> (latent, ids, source)."""
    latent = self.bottleneck([(t, name) for name, (t, _, _) in encoded], key)
    return (
        latent,
        jnp.concatenate([ids for _, (_, ids, _) in encoded], axis=1),
        jnp.concatenate([src for _, (_, _, src) in encoded]),
    )

  def encode(
      self, inputs: dict[str, Array], keep: dict[str, Array] | None = None, key: Array | None = None
  ) -> tuple[Array, Array, Array]:
    """Encodes the given modalities ({"ecg": (B, L), "ppg": (B, L)}, either or both; visible
    patches `keep[m]` (B, Nk_m), default all) through the bottleneck.

    Returns (latent tokens (B, T, latent), patch ids (B, T), source modality ids (T,)).
    """
    if not inputs:
      raise ValueError("M2AE needs at least one modality: pass ppg=... and/or ecg=...")
    keep = keep or {}
    keys = layers.split_keys(key, len(MODALITIES) + 1)
    encoded = [
        (name, self._tokens(name, inputs[name], keep.get(name), keys[i]))
        for i, name in enumerate(MODALITIES)
        if name in inputs
    ]
    return self._bottleneck(encoded, keys[-1])

  @staticmethod
  def _inputs(ppg: Array | None, ecg: Array | None) -> dict[str, Array]:
    return {name: x for name, x in (("ecg", ecg), ("ppg", ppg)) if x is not None}

  def fingerprint(self, ppg: Array | None = None, ecg: Array | None = None) -> Array:
    """The biosignal fingerprint (B, latent): mean of the bottleneck's latent tokens over the
    given modalities' tokens (both, or either alone). Call `model.eval()` first for inference."""
    latent, _, _ = self.encode(self._inputs(ppg, ecg))
    return jnp.mean(latent, axis=1)

  embed = fingerprint

  def reconstruct(
      self, ppg: Array | None = None, ecg: Array | None = None, *, target: str = "ecg"
  ) -> Array:
    """The whole `target` waveform (B, L) decoded from the given modalities (e.g. PPG -> ECG
    with ppg only), through the unchanged encoders."""
    _modality_id(target)
    latent, ids, source = self.encode(self._inputs(ppg, ecg))
    return self._decoder(target)(latent, ids, source)

  def encoder(self, modality: str = "ppg") -> FingerprintEncoder:
    """The exportable `enc(x (B, L)) -> (B, latent)` of one modality (shares this model's
    parameters)."""
    _modality_id(modality)
    return FingerprintEncoder(self._path(modality), self.bottleneck, modality)

  # -------------------------------------------------------------------------------------------
  def loss(
      self, batch: dict[str, Array], key: Array, *, mask_ratio: float | None = None
  ) -> tuple[Array, dict[str, Array]]:
    """The M2AE objective on a batch {"ppg", "ecg": (B, L)} (+ "subject" (B,) int for
    subject-level positives). Returns (loss, metrics) with `loss` and every weighted part.

    Each encoder runs once, on its visible patches under the complementary masks (stacked with
    the augmented view's same patches when w_augment > 0); the bottleneck then runs on both
    modalities' tokens (joint: masked reconstruction) and on each modality's alone (ECG-only
    and PPG-only fingerprints: contrastive terms and cross-modal reconstruction).
    """
    w = self.weights
    ppg, ecg = batch["ppg"], batch["ecg"]
    b = ecg.shape[0]
    chex.assert_shape([ppg, ecg], (b, self.seq_len))
    k_mask, k_view, k_enc, k_joint, k_single, k_dec = jax.random.split(key, 6)
    use_views = w["w_augment"] > 0
    keep = dict(zip(("ecg", "ppg"), self.complementary_masks(k_mask, b, mask_ratio=mask_ratio)))
    metrics = {}
    total = jnp.float32(0.0)

    # Encoders: (B or 2B, Nk_m, D) per modality, the view's rows after the batch's.
    encoded = {}
    for name in MODALITIES:
      i = _modality_id(name)
      x, ids_keep = batch[name], keep[name]
      if use_views:
        view = augment_view(jax.random.fold_in(k_view, i), x, **self.view)
        x, ids_keep = jnp.concatenate([x, view]), jnp.concatenate([ids_keep, ids_keep])
      encoded[name] = self._tokens(name, x, ids_keep, jax.random.fold_in(k_enc, i))
    batch_rows = lambda e: (e[0][:b], e[1][:b], e[2])  # noqa: E731  (drop the view rows)

    def decode(target, latent, ids, source, salt):
      return self._decoder(target)(latent, ids, source, jax.random.fold_in(k_dec, salt))

    # 1. Joint pass: masked MSE of each signal (its masked patches are the other's visible).
    if w["w_ecg"] > 0 or w["w_ppg"] > 0:
      joint = self._bottleneck([(n, batch_rows(encoded[n])) for n in MODALITIES], k_joint)
      for i, name in enumerate(MODALITIES):
        if w[f"w_{name}"] > 0:
          mse = losses.masked_mse(
              decode(name, *joint, salt=i),
              batch[name],
              masking.sample_mask(keep[name], self.num_patches, self.patch_len),
          )
          metrics[f"mse_{name}"] = mse
          total = total + w[f"w_{name}"] * mse

    # 2. Single-modality bottleneck passes: ECG-only and PPG-only fingerprints.
    if not (use_views or w["w_contrast"] > 0 or w["w_cross_ecg"] > 0 or w["w_cross_ppg"] > 0):
      metrics["loss"] = total
      return total, metrics
    single, fingerprint = {}, {}
    for name in MODALITIES:
      single[name] = self._bottleneck(
          [(name, encoded[name])], jax.random.fold_in(k_single, _modality_id(name))
      )
      fingerprint[name] = jnp.mean(single[name][0], axis=1)  # (B or 2B, latent)

    # 3. Cross-modal reconstruction: the whole signal from the other modality's tokens alone.
    for i, (target, source) in enumerate((("ecg", "ppg"), ("ppg", "ecg"))):
      if w[f"w_cross_{target}"] > 0:
        rec = decode(target, *batch_rows(single[source]), salt=2 + i)
        mse = jnp.mean(jnp.square(rec - batch[target].astype(jnp.float32)))
        metrics[f"cross_mse_{target}"] = mse
        total = total + w[f"w_cross_{target}"] * mse

    # 4. Contrastive terms.
    scale = self.temperature()
    nce = lambda a, c: contrastive.info_nce(  # noqa: E731
        a, c, scale, subject=batch.get("subject"), positives=self.positives
    )
    if w["w_contrast"] > 0:
      metrics["nce_cross"] = nce(fingerprint["ecg"][:b], fingerprint["ppg"][:b])
      total = total + w["w_contrast"] * metrics["nce_cross"]
    if use_views:
      metrics["nce_augment"] = 0.5 * sum(
          nce(fingerprint[n][:b], fingerprint[n][b:]) for n in MODALITIES
      )
      total = total + w["w_augment"] * metrics["nce_augment"]
    metrics["temperature"] = 1.0 / scale
    metrics["loss"] = total
    return total, metrics
