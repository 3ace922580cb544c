"""Attention, transformer blocks and one modality's path of xMAE (the reference's SinglePath).

A path is: stem (`stem.py`) -> patch embedding -> + learned positions -> pre-LN transformer
blocks, then either the pooled projection (`PathEncoder`, the exportable encoder) or, during
pretraining, the decoder pieces (`SinglePath`: a decoder block, the waveform head and the
per-position mask-location table). xMAE, M2AE and the baselines all build on these classes.

Numerics follow torch (see `layers`): `MultiheadAttention` keeps torch's packed input projection
((D, 3D) here, i.e. the transpose of `in_proj_weight`), so self-attention is one matmul, and its
dropout acts on the attention weights. Dropout keys are explicit: a block splits its `key` with
`layers.split_keys`, which gives Nones in deterministic use.
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmae_jax.errors import XmaeError
from xmae_jax.models.layers import F32
from xmae_jax.models.layers import Array
from xmae_jax.models.layers import Dense
from xmae_jax.models.layers import Dropout
from xmae_jax.models.layers import LayerNorm
from xmae_jax.models.layers import PatchEmbed
from xmae_jax.models.layers import WaveformDecoder
from xmae_jax.models.layers import constant
from xmae_jax.models.layers import gelu
from xmae_jax.models.layers import keep_mask
from xmae_jax.models.layers import linear
from xmae_jax.models.layers import normal_init
from xmae_jax.models.layers import split_keys
from xmae_jax.models.layers import torch_default_init
from xmae_jax.models.layers import xavier_uniform_init
from xmae_jax.models.stem import UNetInceptionStem

# How visible tokens get their positions: "compact" = pos[0..Nk-1], the reference's behaviour
# for the concatenated visible patches; "true" = pos[ids] of the patches they come from.
VISIBLE_POSITIONS = ("compact", "true")


def check_visible_positions(mode: str) -> str:
  """`mode` if it is one of VISIBLE_POSITIONS, else a one-line XmaeError naming the setting."""
  if mode not in VISIBLE_POSITIONS:
    raise XmaeError(f"model.visible_positions {mode!r}: expected 'compact' (reference) or 'true'")
  return mode


# ----------------------------------------------------------------------------------------------
# Attention and transformer blocks.
# ----------------------------------------------------------------------------------------------
class MultiheadAttention(nnx.Module):
  """torch nn.MultiheadAttention (batch_first, bias, dropout on the attention weights).

  Parameters: `in_kernel` (D, 3D) = in_proj_weight.T, `in_bias` (3D,), `out_kernel` (D, D) =
  out_proj.weight.T, `out_bias` (D,). Heads split D contiguously as torch does.
  """

  def __init__(
      self, d_model: int, num_heads: int, *, dropout: float = 0.0, dtype=F32, rngs: nnx.Rngs
  ):
    if d_model % num_heads:
      raise XmaeError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    ki, ko = jax.random.split(rngs.params())
    # torch: xavier_uniform_ on in_proj_weight (3D, D), zero biases, Linear default for out_proj.
    self.in_kernel = nnx.Param(
        xavier_uniform_init(ki, (d_model, 3 * d_model), d_model, 3 * d_model)
    )
    self.in_bias = nnx.Param(constant((3 * d_model,), 0.0))
    self.out_kernel = nnx.Param(torch_default_init(ko, (d_model, d_model), d_model))
    self.out_bias = nnx.Param(constant((d_model,), 0.0))
    self.num_heads = num_heads
    self.rate = dropout
    self.deterministic = False
    self.dtype = dtype

  def _heads(self, x: Array) -> Array:
    b, t, d = x.shape
    return x.reshape(b, t, self.num_heads, d // self.num_heads)

  def __call__(self, q_in: Array, kv_in: Array | None = None, *, key: Array | None = None) -> Array:
    """Self-attention when `kv_in` is None, else queries from `q_in`, keys/values from `kv_in`."""
    dt = self.dtype
    w = self.in_kernel[...].astype(dt)
    bias = self.in_bias[...].astype(dt)
    d = w.shape[0]
    if kv_in is None:
      qkv = linear(q_in.astype(dt), w) + bias
      q, k, v = jnp.split(qkv, 3, axis=-1)
    else:
      q = linear(q_in.astype(dt), w[:, :d]) + bias[:d]
      k, v = jnp.split(linear(kv_in.astype(dt), w[:, d:]) + bias[d:], 2, axis=-1)
    q, k, v = self._heads(q), self._heads(k), self._heads(v)
    if self.deterministic or self.rate == 0.0:
      o = jax.nn.dot_product_attention(q, k, v)
    else:
      if key is None:
        raise ValueError("attention dropout in training mode needs a `key`")
      scale = 1.0 / math.sqrt(q.shape[-1])
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(F32) * scale
      probs = jax.nn.softmax(logits, axis=-1)
      keep = keep_mask(key, 1.0 - self.rate, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - self.rate), 0.0).astype(dt)
      o = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    o = o.reshape(*o.shape[:2], d)
    return linear(o, self.out_kernel[...].astype(dt)) + self.out_bias[...].astype(dt)


class MLP(nnx.Module):
  """Linear -> exact GELU -> Linear -> Dropout (the reference's `mlp`/`ffn` tail)."""

  def __init__(self, d_model: int, hidden: int, *, dropout: float = 0.0, dtype=F32, rngs: nnx.Rngs):
    self.fc1 = Dense(d_model, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = Dense(hidden, d_model, dtype=dtype, rngs=rngs)
    self.dropout = Dropout(dropout)

  def __call__(self, x: Array, key: Array | None = None) -> Array:
    return self.dropout(self.fc2(gelu(self.fc1(x))), key)


class TransformerBlock(nnx.Module):
  """Pre-LN block: x += MHA(LN(x)); x += MLP(LN(x)).

  The reference's TransformerEncoderBlock (mlp_ratio 4) and TransformerDecoderLite
  (mlp_ratio 2) compute exactly this; one class serves both.
  """

  def __init__(
      self,
      d_model: int,
      num_heads: int,
      *,
      mlp_ratio: float = 4.0,
      dropout: float = 0.1,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    self.norm1 = LayerNorm(d_model, dtype=dtype)
    self.attn = MultiheadAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.norm2 = LayerNorm(d_model, dtype=dtype)
    self.mlp = MLP(d_model, int(mlp_ratio * d_model), dropout=dropout, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, key: Array | None = None) -> Array:
    k_attn, k_mlp = split_keys(key, 2)
    x = x + self.attn(self.norm1(x), key=k_attn)
    return x + self.mlp(self.norm2(x), k_mlp)


class CrossAttentionBlock(nnx.Module):
  """The reference's CrossAttentionBlock: x = q + MHA(LN_q(q), LN_kv(kv)); x += FFN(x), with
  FFN = LN -> Linear(D, 4D) -> GELU -> Linear -> Dropout."""

  def __init__(
      self, d_model: int, num_heads: int, *, dropout: float = 0.1, dtype=F32, rngs: nnx.Rngs
  ):
    self.norm_q = LayerNorm(d_model, dtype=dtype)
    self.norm_kv = LayerNorm(d_model, dtype=dtype)
    self.attn = MultiheadAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.ffn_norm = LayerNorm(d_model, dtype=dtype)
    self.ffn = MLP(d_model, 4 * d_model, dropout=dropout, dtype=dtype, rngs=rngs)

  def __call__(self, q: Array, kv: Array, key: Array | None = None) -> Array:
    k_attn, k_ffn = split_keys(key, 2)
    x = q + self.attn(self.norm_q(q), self.norm_kv(kv), key=k_attn)
    return x + self.ffn(self.ffn_norm(x), k_ffn)


# ----------------------------------------------------------------------------------------------
# Patch bookkeeping.
# ----------------------------------------------------------------------------------------------
def gather_patches(x: Array, ids_keep: Array, patch_len: int) -> Array:
  """(B, L) waveform, (B, Nk) patch indices -> (B, Nk * P) visible samples, concatenated."""
  b, length = x.shape
  patches = x.reshape(b, length // patch_len, patch_len)
  return jnp.take_along_axis(patches, ids_keep[:, :, None], axis=1).reshape(b, -1)


def scatter_tokens(full: Array, ids: Array, tokens: Array) -> Array:
  """Writes `tokens` (B, Nk, D) into `full` (B, N, D) at positions `ids` (B, Nk)."""
  return jax.vmap(lambda f, i, t: f.at[i].set(t))(full, ids, tokens)


# ----------------------------------------------------------------------------------------------
# One modality's path (the reference's SinglePath), split into the exportable encoder and the
# pretraining-only parts.
# ----------------------------------------------------------------------------------------------
class PathEncoder(nnx.Module):
  """Stem -> patch embedding -> + learned positions -> pre-LN transformer blocks [-> mean-pool ->
  LN -> Linear projection].

  `enc(x)` maps a waveform (B, L) to the pooled embedding (B, latent_dim): the module exported
  for downstream use. `tokens(...)` gives the token sequence used by the pretraining models.

  Args:
    seq_len, patch_len: samples per example and per token (N = seq_len / patch_len tokens).
    d_model, num_heads, depth: transformer width, heads, number of blocks.
    stem_channels, stem_widths: the stem's output channels and its three stage widths.
    dropout: dropout of the blocks (attention weights and MLP output).
    latent_dim: output size of the projection head; `build_proj=False` omits the head.
    mlp_ratio: hidden width of the block MLPs relative to d_model.
    dtype: compute dtype.
  """

  def __init__(
      self,
      *,
      seq_len: int,
      patch_len: int,
      d_model: int,
      num_heads: int,
      depth: int,
      stem_channels: int,
      stem_widths: Sequence[int],
      dropout: float,
      latent_dim: int,
      mlp_ratio: float = 4.0,
      build_proj: bool = True,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    if seq_len % patch_len:
      raise XmaeError(f"seq_len {seq_len} is not a multiple of patch_len {patch_len}")
    if patch_len % 4:
      raise XmaeError(f"patch_len {patch_len} must be a multiple of 4 (the stem halves twice)")
    self.seq_len, self.patch_len = seq_len, patch_len
    self.num_patches = seq_len // patch_len
    self.d_model = d_model
    self.stem = UNetInceptionStem(1, stem_channels, stem_widths, dtype=dtype, rngs=rngs)
    self.patch = PatchEmbed(stem_channels, d_model, patch_len, dtype=dtype, rngs=rngs)
    self.pos = nnx.Param(normal_init(rngs.params(), (1, self.num_patches, d_model), 0.02))
    self.blocks = nnx.List(
        [
            TransformerBlock(
                d_model, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, dtype=dtype, rngs=rngs
            )
            for _ in range(depth)
        ]
    )
    if build_proj:
      self.proj_norm = LayerNorm(d_model, dtype=dtype)
      self.proj = Dense(d_model, latent_dim, dtype=dtype, rngs=rngs)
    else:
      self.proj_norm = self.proj = None
    self.dtype = dtype

  def positions(self, ids: Array | None, count: int, mode: str) -> Array:
    """Position embeddings for `count` tokens: pos[0..count-1] ("compact", the reference's
    behaviour for visible tokens) or pos[ids] ("true")."""
    pos = self.pos[...]
    if check_visible_positions(mode) == "true" and ids is not None:
      return jnp.take(pos[0], ids, axis=0)
    return pos[:, :count]

  def tokens(
      self,
      x: Array,
      ids_keep: Array | None = None,
      *,
      positions: str = "compact",
      key: Array | None = None,
  ) -> Array:
    """Encodes the visible patches of `x` (B, L): (B, Nk, D) for `ids_keep` (B, Nk), or all
    (B, N, D) when `ids_keep` is None.

    Like the reference, the visible patches are concatenated into one shorter waveform that
    goes through the stem, so the stem sees contiguous runs as real signal.
    """
    b = x.shape[0]
    chex.assert_shape(x, (b, self.seq_len))
    if ids_keep is not None:
      x = gather_patches(x, ids_keep, self.patch_len)
    n = x.shape[1] // self.patch_len
    t = self.patch(self.stem(x[:, :, None]))
    t = t + self.positions(ids_keep, n, positions).astype(t.dtype)
    for blk, k in zip(self.blocks, split_keys(key, len(self.blocks))):
      t = blk(t, k)
    chex.assert_shape(t, (b, n, self.d_model))
    return t

  def pool(self, tokens: Array) -> Array:
    """Mean over tokens -> LN -> Linear: (B, N, D) -> (B, latent) float32."""
    if self.proj is None:
      raise ValueError("this encoder was built without its projection head (build_proj=False)")
    return self.proj(self.proj_norm(jnp.mean(tokens, axis=1))).astype(F32)

  def __call__(self, x: Array) -> Array:
    """(B, L) -> (B, latent): the downstream embedding (deterministic use: call .eval())."""
    return self.pool(self.tokens(x))


class SinglePath(nnx.Module):
  """One modality's path of the reference (`SinglePath`): the exportable `encoder`
  (PathEncoder) plus the pretraining decoder (`dec_block`: a pre-LN block with MLP ratio 2,
  `decoder`: WaveformDecoder) and the per-position `mask_loc_table` (N, D).

  Args (keyword): everything PathEncoder takes, plus
    build_decoder: build dec_block + decoder (False when the model never decodes this path).
    build_mask_loc: build mask_loc_table (xMAE's bridge query needs it for ECG).
    build_proj: build the encoder's projection head.
  """

  def __init__(
      self,
      *,
      seq_len: int,
      patch_len: int,
      d_model: int,
      num_heads: int,
      depth: int,
      stem_channels: int,
      stem_widths: Sequence[int],
      dropout: float,
      latent_dim: int,
      build_decoder: bool = True,
      build_mask_loc: bool = True,
      build_proj: bool = True,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    self.encoder = PathEncoder(
        seq_len=seq_len,
        patch_len=patch_len,
        d_model=d_model,
        num_heads=num_heads,
        depth=depth,
        stem_channels=stem_channels,
        stem_widths=stem_widths,
        dropout=dropout,
        latent_dim=latent_dim,
        build_proj=build_proj,
        dtype=dtype,
        rngs=rngs,
    )
    n = self.encoder.num_patches
    if build_decoder:
      self.dec_block = TransformerBlock(
          d_model, num_heads, mlp_ratio=2.0, dropout=dropout, dtype=dtype, rngs=rngs
      )
      self.decoder = WaveformDecoder(d_model, patch_len, 1, dtype=dtype, rngs=rngs)
    else:
      self.dec_block = self.decoder = None
    self.mask_loc_table = (
        nnx.Param(xavier_uniform_init(rngs.params(), (n, d_model), d_model, n))
        if build_mask_loc
        else None
    )
    self.dtype = dtype

  @property
  def num_patches(self) -> int:
    return self.encoder.num_patches

  def query_tokens(self, t_vis: Array, ids_keep: Array, *, positions: str = "compact") -> Array:
    """Full-length tokens (B, N, D): the encoded visible tokens (with the positions they were
    encoded with removed) scattered to their true indices, the mask-location table elsewhere,
    then pos[0..N-1] added to all (the reference's make_query_tokens_from_pre_encoded)."""
    b, nk, d = t_vis.shape
    pos = self.encoder.pos[...]
    t_nopos = t_vis - self.encoder.positions(ids_keep, nk, positions).astype(t_vis.dtype)
    table = jnp.broadcast_to(
        self.mask_loc_table[...].astype(t_vis.dtype)[None], (b, self.num_patches, d)
    )
    return scatter_tokens(table, ids_keep, t_nopos) + pos.astype(t_vis.dtype)

  def decode_tokens(self, tokens: Array, key: Array | None = None) -> Array:
    """Full-length tokens (B, N, D) -> waveform (B, L) float32: dec_block then decoder."""
    return self.decoder(self.dec_block(tokens, key))[..., 0]

  def decode_visible(
      self, t_vis: Array, ids_keep: Array, mask_token: Array, key: Array | None = None
  ) -> Array:
    """MAE-style decoding (the reference's decode_full_wave): visible tokens at their indices,
    `mask_token` (1, 1, D) elsewhere, + pos, then decode_tokens. When nothing is masked the
    tokens are decoded as they are (no pos re-added), as in the reference."""
    b, nk, d = t_vis.shape
    n = self.num_patches
    if nk != n:
      full = jnp.broadcast_to(mask_token.astype(t_vis.dtype), (b, n, d))
      t_vis = scatter_tokens(full, ids_keep, t_vis) + self.encoder.pos[...].astype(t_vis.dtype)
    return self.decode_tokens(t_vis, key)
