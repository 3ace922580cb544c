"""The reference's convolutional stem (UNetHalfInceptionStem1D): waveform -> per-sample features.

Each modality's path starts here: (B, L, 1) -> (B, L, stem_channels), before the patch embedding
(`layers.PatchEmbed`) cuts the features into tokens. The stem is its own concept because it is
the only multi-scale part of the model: Inception blocks at L, L/2 and L/4, FPN-style top-down
fusion with linear upsampling, and a conv skip from the input.

Numerics follow torch as the elementary layers do (`layers`): BatchNorm with eps 1e-5 and the
unbiased running variance, SiLU, and `upsample_linear` = `F.interpolate(mode="linear",
align_corners=False)`. Parameter names (`enc1.0.branch_kernels.0`, `down1.conv.kernel`, ...)
are what `xmae_jax.interop.reference` maps to the reference's state dict.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax.errors import XmaeError
from xmae_jax.models.layers import F32
from xmae_jax.models.layers import Array
from xmae_jax.models.layers import BatchNorm
from xmae_jax.models.layers import Conv1d
from xmae_jax.models.layers import conv1d
from xmae_jax.models.layers import torch_default_init


class ConvBNAct(nnx.Module):
  """Conv1d (no bias, "same" padding k // 2) -> BatchNorm -> SiLU, as the reference's ConvBNAct."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size: int = 3,
      *,
      stride: int = 1,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    self.conv = Conv1d(
        in_channels, out_channels, kernel_size, stride=stride, dtype=dtype, rngs=rngs
    )
    self.bn = BatchNorm(out_channels, dtype=dtype)

  def __call__(self, x: Array) -> Array:
    return jax.nn.silu(self.bn(self.conv(x)))


def inception_split(out_channels: int, n_branches: int) -> list[int]:
  """The reference's channel split: out // n per branch, the remainder to the last one."""
  mid = out_channels // n_branches
  return [mid] * (n_branches - 1) + [out_channels - mid * (n_branches - 1)]


class InceptionBlock(nnx.Module):
  """Parallel Conv-BN-SiLU branches (k = 3, 5, 7; channels split as `inception_split`), concat,
  then a 1x1 ConvBNAct fuse.

  Computed as ONE convolution: each branch kernel is zero-padded to the largest width and the
  kernels are concatenated along the output channels (identical results, since "same" padding
  centres every kernel). The three branch BatchNorms are one BatchNorm over the concatenated
  channels (`branch_bn`; BN is per channel, so this is exact). Branch kernels stay separate
  parameters with the reference's shapes, so the zero padding never receives gradient.
  """

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_sizes: Sequence[int] = (3, 5, 7),
      *,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    self.kernel_sizes = tuple(kernel_sizes)
    self.widths = inception_split(out_channels, len(self.kernel_sizes))
    self.branch_kernels = nnx.List(
        [
            nnx.Param(torch_default_init(rngs.params(), (k, in_channels, w), in_channels * k))
            for k, w in zip(self.kernel_sizes, self.widths)
        ]
    )
    self.branch_bn = BatchNorm(out_channels, dtype=dtype)
    self.fuse = ConvBNAct(out_channels, out_channels, kernel_size=1, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def fused_kernel(self) -> Array:
    kmax = max(self.kernel_sizes)
    padded = []
    for k, kernel in zip(self.kernel_sizes, self.branch_kernels):
      p = (kmax - k) // 2
      padded.append(jnp.pad(kernel[...], ((p, p), (0, 0), (0, 0))))
    return jnp.concatenate(padded, axis=-1)

  def __call__(self, x: Array) -> Array:
    kernel = self.fused_kernel()
    y = conv1d(x, kernel, padding=kernel.shape[0] // 2, dtype=self.dtype)
    return self.fuse(jax.nn.silu(self.branch_bn(y)))


def upsample_linear(x: Array, out_len: int) -> Array:
  """torch F.interpolate(x, size=out_len, mode="linear", align_corners=False), channels-last.

  Source index (i + 0.5) * in / out - 0.5, clamped at 0; the right neighbour is clamped at the
  end. Exact 2x upsampling (the stem's case) uses shifted copies instead of a gather.
  """
  in_len = x.shape[1]
  if out_len == 2 * in_len:
    prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    return jnp.stack([even, odd], axis=2).reshape(x.shape[0], out_len, *x.shape[2:])
  # float32 index arithmetic, as torch's CPU kernel does for float inputs.
  scale = np.float32(in_len) / np.float32(out_len)
  src = np.maximum(
      scale * (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
      np.float32(0.0),
  )
  i0 = np.minimum(np.floor(src).astype(np.int32), in_len - 1)
  i1 = np.minimum(i0 + 1, in_len - 1)
  lam = jnp.asarray((src - i0).astype(np.float32)).astype(x.dtype)[None, :, None]
  return x[:, i0] * (1 - lam) + x[:, i1] * lam


class UNetInceptionStem(nnx.Module):
  """The reference's UNetHalfInceptionStem1D: (B, L, in) -> (B, L, out); L divisible by 4.

  Down path of Inception blocks at L, L/2, L/4 (stride-2 ConvBNAct between), FPN-style top-down
  fusion with 1x1 lateral/reduction convs and linear upsampling, a ConvBNAct head, plus a
  1x1 conv + BN skip from the input.
  """

  def __init__(
      self,
      in_channels: int = 1,
      out_channels: int = 32,
      widths: Sequence[int] = (32, 64, 128),
      *,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    c1, c2, c3 = widths
    if in_channels == out_channels:
      raise XmaeError("the reference's stem has a conv skip only when in_channels != out_channels")
    mk = lambda i, o: InceptionBlock(i, o, dtype=dtype, rngs=rngs)  # noqa: E731
    self.enc1 = nnx.List([mk(in_channels, c1), mk(c1, c1)])
    self.down1 = ConvBNAct(c1, c2, 3, stride=2, dtype=dtype, rngs=rngs)
    self.enc2 = nnx.List([mk(c2, c2), mk(c2, c2)])
    self.down2 = ConvBNAct(c2, c3, 3, stride=2, dtype=dtype, rngs=rngs)
    self.enc3 = nnx.List([mk(c3, c3), mk(c3, c3)])
    conv1x1 = lambda i, o: Conv1d(i, o, 1, dtype=dtype, rngs=rngs)  # noqa: E731
    self.lat2 = conv1x1(c2, c2)
    self.lat1 = conv1x1(c1, c1)
    self.red3to2 = conv1x1(c3, c2)
    self.red2to1 = conv1x1(c2, c1)
    self.smooth2 = ConvBNAct(c2, c2, 3, dtype=dtype, rngs=rngs)
    self.smooth1 = ConvBNAct(c1, c1, 3, dtype=dtype, rngs=rngs)
    self.head = ConvBNAct(c1, out_channels, 3, dtype=dtype, rngs=rngs)
    self.skip = conv1x1(in_channels, out_channels)
    self.skip_bn = BatchNorm(out_channels, dtype=dtype)

  def __call__(self, x: Array) -> Array:
    e1 = x
    for blk in self.enc1:
      e1 = blk(e1)
    e2 = self.down1(e1)
    for blk in self.enc2:
      e2 = blk(e2)
    e3 = self.down2(e2)
    for blk in self.enc3:
      e3 = blk(e3)
    t2 = self.smooth2(self.lat2(e2) + upsample_linear(self.red3to2(e3), e2.shape[1]))
    t1 = self.smooth1(self.lat1(e1) + upsample_linear(self.red2to1(t2), e1.shape[1]))
    return self.head(t1) + self.skip_bn(self.skip(x))
