"""Building blocks shared by the xMAE, M2AE and baseline models (Flax NNX, channels-last).

Every block reproduces the PyTorch module of the xMAE reference (hzhou3/xMAE,
`utils/model_arch/xmae.py`) numerically, so that its weights can be imported
(`xmae_jax.interop.reference`) and outputs match within float32 rounding:

* LayerNorm and BatchNorm use eps 1e-5; GELU is the exact erf form (torch's default).
* `BatchNorm` follows torch: training normalizes with the biased batch variance and updates the
  running variance with the unbiased one, momentum 0.1 (new = 0.9 * old + 0.1 * batch).
* `upsample_linear` is `F.interpolate(mode="linear", align_corners=False)`.
* `MultiheadAttention` keeps torch's packed input projection ((D, 3D) here, i.e. the transpose of
  `in_proj_weight`), so self-attention is one matmul; dropout acts on the attention weights.
* Parameters are initialized as torch initializes them (kaiming-uniform fan-in bounds), so training
  from scratch starts where the reference does.

Layout: activations are (batch, length, channels) throughout; kernels are (width, in, out).
The mapping to the reference's state-dict names and layouts lives in `xmae_jax.interop.reference`.

Precision: parameters are float32; `dtype` (the compute dtype, float32 or bfloat16) is what
matmuls and convolutions run in. Normalization statistics are computed in float32.

Randomness: modules hold no RNG state (tree-mode friendly). Dropout draws from an explicit `key`
passed to `__call__`; `key=None` is allowed only when the module is deterministic
(`model.eval()`, or a dropout rate of 0).

Train/eval: `model.train()` / `model.eval()` set `deterministic` (dropout) and
`use_running_average` (BatchNorm) on every block below.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
F32 = jnp.float32


# ----------------------------------------------------------------------------------------------
# Initializers matching torch's defaults.
#
# Building a model eagerly compiles every random op once per parameter shape, which costs minutes
# on a busy CPU. So draws go through ONE jitted function over a few power-of-two sizes and are
# cut to shape on the host; under tracing (jit, eval_shape) the same draw is sliced in-graph, so
# both paths give the same values. Constants are numpy arrays (no compilation at all).
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("size", "normal"))
def _draw(key, scale, *, size: int, normal: bool):
  if normal:
    return scale * jax.random.normal(key, (size,), F32)
  return jax.random.uniform(key, (size,), F32, -scale, scale)


def _random(key, shape, scale, normal=False) -> Array:
  n = math.prod(shape)
  flat = _draw(key, scale, size=max(1024, 1 << (n - 1).bit_length()), normal=normal)
  if isinstance(flat, jax.core.Tracer):
    return flat[:n].reshape(shape)
  return jnp.asarray(np.asarray(flat)[:n].reshape(shape))


def constant(shape, value: float) -> Array:
  return jnp.asarray(np.full(shape, value, np.float32))


def _uniform(key, shape, bound):
  return _random(key, shape, bound)


def normal_init(key, shape, std):
  return _random(key, shape, std, normal=True)


def torch_default_init(key, shape, fan_in):
  """nn.Linear / nn.Conv1d default (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
  return _uniform(key, shape, 1.0 / math.sqrt(fan_in))


def xavier_uniform_init(key, shape, fan_in, fan_out):
  return _uniform(key, shape, math.sqrt(6.0 / (fan_in + fan_out)))


def _mix32(h: Array) -> Array:
  """MurmurHash3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def keep_mask(key: Array, keep_prob: float, shape: Sequence[int]) -> Array:
  """Bernoulli(keep_prob) mask for dropout, from a counter-based hash keyed by `key` (typed or
  raw uint32 keys).

  Element i gets mix(mix(i * golden + k0) ^ k1) for the key words k0, k1 (two keyed rounds of
  MurmurHash3's finalizer) and is kept when that is below round(keep_prob * 2^32), so the keep
  probability is exact to 2^-32. About a dozen integer operations per element that XLA fuses
  and vectorizes: XLA:CPU's RngBitGenerator (and threefry, which also compiled slowly) spent
  ~5% of the paper train step drawing the ~3 M dropout bits. Dropout needs independent
  uniform bits, not a cryptographic generator; a mask depends only on the key and the shape.
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  data = data.reshape(-1).astype(jnp.uint32)
  k0, k1 = data[0], data[-1] ^ jnp.uint32(0x68E31DA4)
  n = math.prod(shape)
  if n >= 2 ** 32:
    raise ValueError(f"dropout mask of {n} elements: at most 2^32 - 1 supported")
  counter = jax.lax.iota(jnp.uint32, n).reshape(tuple(shape))
  bits = _mix32(_mix32(counter * jnp.uint32(0x9E3779B9) + k0) ^ k1)
  threshold = min(int(round(keep_prob * 2.0 ** 32)), 2 ** 32 - 1)
  return bits < jnp.uint32(threshold)


def _split_keys(key: Array | None, n: int) -> list[Array | None]:
  """`n` independent keys from `key`, or `n` Nones when there is no key (deterministic use)."""
  if key is None:
    return [None] * n
  return list(jax.random.split(key, n))


# ----------------------------------------------------------------------------------------------
# Elementary layers.
# ----------------------------------------------------------------------------------------------
@jax.custom_vjp
def linear(x: Array, kernel: Array) -> Array:
  """`x @ kernel` for x (..., K) and a (K, N) kernel, with a faster weight gradient on CPU.

  Autodiff writes the kernel's gradient as a dot that contracts the leading (row) dimension of
  both operands. XLA:CPU runs that form with Eigen at about half the speed of a plain
  (M, K) x (K, N) matmul, which it hands to YNNPACK (measured 43 vs 80 GFLOP/s on one core for
  the (1600, 256) x (1600, 1024) weight gradient of an MLP layer); those dots took 13% of the
  paper train step. The backward pass below materializes the narrower of x and the output
  gradient transposed (one copy) so the weight gradient is a plain matmul. Same products,
  summed in another order: results agree within float32 rounding.
  """
  return jnp.matmul(x, kernel)


def _linear_fwd(x, kernel):
  return jnp.matmul(x, kernel), (x, kernel)


def _materialized_t(a: Array) -> Array:
  """a.T as its own array: the optimization barriers keep XLA's simplifier from folding the
  transpose back into the dot's dimension numbers (which would restore the slow form). XLA may
  still fuse a cheap producer of `a` into the transposing copy."""
  return jax.lax.optimization_barrier(jax.lax.optimization_barrier(a).T)


def _linear_bwd(res, g):
  x, kernel = res
  dx = jnp.matmul(g, kernel.T)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  if x2.shape[1] <= g2.shape[1]:     # transpose the narrower of the two activations
    dkernel = jnp.matmul(_materialized_t(x2), g2)
  else:
    dkernel = _materialized_t(jnp.matmul(_materialized_t(g2), x2))
  return dx, dkernel.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Module):
  """torch nn.Linear with a (in, out) kernel; computes in `dtype`."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               dtype=F32, rngs: nnx.Rngs):
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(torch_default_init(kk, (in_features, out_features), in_features))
    self.bias = (nnx.Param(torch_default_init(kb, (out_features,), in_features))
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    y = linear(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """torch nn.LayerNorm over the last axis: eps 1e-5, exact (two-pass) variance in float32."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, dtype=F32):
    self.scale = nnx.Param(constant((num_features,), 1.0))
    self.bias = nnx.Param(constant((num_features,), 0.0))
    self.epsilon = epsilon
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(F32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


def batch_moments(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  """Mean and biased variance of `x` over `axes` (all but the last), in one pass over `x`.

  Both come from the sums of d = x - shift and d^2: two reductions of the same input, which XLA
  computes in one read of the (large) activation, where the two-pass form (the mean first, then
  the mean squared deviation) reads it twice and has a longer backward pass. The per-channel
  shift, the mean of the first (up to) 64 rows, lies within a few standard deviations of the
  mean, which keeps m2 - m1^2 well conditioned whatever the offset of the data: the variance
  matches the two-pass one within float32 rounding.
  """
  rows = x.reshape(-1, x.shape[-1])
  shift = jax.lax.stop_gradient(jnp.mean(rows[:64], axis=0))
  d = x - shift
  m1 = jnp.mean(d, axis=axes)
  m2 = jnp.mean(jnp.square(d), axis=axes)
  return shift + m1, jnp.maximum(m2 - jnp.square(m1), 0.0)


class BatchNorm(nnx.Module):
  """torch nn.BatchNorm1d on channels-last input (statistics over every axis but the last).

  Training (`use_running_average=False`): normalize with the biased batch variance; update
  running_mean/var with momentum 0.1, the variance with the unbiased (n / (n - 1)) estimate,
  exactly as torch. Eval: normalize with the running statistics. Statistics are float32.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
               dtype=F32):
    self.scale = nnx.Param(constant((num_features,), 1.0))
    self.bias = nnx.Param(constant((num_features,), 0.0))
    self.mean = nnx.BatchStat(constant((num_features,), 0.0))
    self.var = nnx.BatchStat(constant((num_features,), 1.0))
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.use_running_average = False

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(F32)
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      mean, var = batch_moments(x32, axes)
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
    # Fold into one per-channel affine map: y = x * a + b.
    a = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
    b = self.bias[...] - mean * a
    return (x32 * a + b).astype(self.dtype)


class Dropout(nnx.Module):
  """Inverted dropout with an explicit key; identity when deterministic or rate == 0."""

  def __init__(self, rate: float):
    self.rate = rate
    self.deterministic = False

  def __call__(self, x: Array, key: Array | None) -> Array:
    if self.deterministic or self.rate == 0.0:
      return x
    if key is None:
      raise ValueError("Dropout in training mode needs a `key` (or call model.eval())")
    keep = keep_mask(key, 1.0 - self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


def conv1d(x: Array, kernel: Array, *, stride: int = 1, padding: int = 0, dtype=F32) -> Array:
  """Channels-last 1-D convolution (torch Conv1d semantics, symmetric zero padding)."""
  if kernel.shape[0] == 1 and stride == 1 and padding == 0:
    return linear(x.astype(dtype), kernel[0].astype(dtype))      # 1x1 conv: a matmul
  return jax.lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(stride,),
      padding=[(padding, padding)], dimension_numbers=("NWC", "WIO", "NWC"))


class Conv1d(nnx.Module):
  """torch nn.Conv1d (bias optional), kernel (k, in, out), padding k // 2 by default."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int | None = None, use_bias: bool = False, dtype=F32, rngs: nnx.Rngs):
    fan_in = in_channels * kernel_size
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(
        torch_default_init(kk, (kernel_size, in_channels, out_channels), fan_in))
    self.bias = nnx.Param(torch_default_init(kb, (out_channels,), fan_in)) if use_bias else None
    self.stride = stride
    self.padding = kernel_size // 2 if padding is None else padding
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    y = conv1d(x, self.kernel[...], stride=self.stride, padding=self.padding, dtype=self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class ConvBNAct(nnx.Module):
  """Conv1d (no bias, "same" padding k // 2) -> BatchNorm -> SiLU, as the reference's ConvBNAct."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
               stride: int = 1, dtype=F32, rngs: nnx.Rngs):
    self.conv = Conv1d(in_channels, out_channels, kernel_size, stride=stride, dtype=dtype,
                       rngs=rngs)
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

  def __init__(self, in_channels: int, out_channels: int,
               kernel_sizes: Sequence[int] = (3, 5, 7), *, dtype=F32, rngs: nnx.Rngs):
    self.kernel_sizes = tuple(kernel_sizes)
    self.widths = inception_split(out_channels, len(self.kernel_sizes))
    self.branch_kernels = nnx.List([
        nnx.Param(torch_default_init(rngs.params(), (k, in_channels, w), in_channels * k))
        for k, w in zip(self.kernel_sizes, self.widths)])
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
  src = np.maximum(scale * (np.arange(out_len, dtype=np.float32) + np.float32(0.5))
                   - np.float32(0.5), np.float32(0.0))
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

  def __init__(self, in_channels: int = 1, out_channels: int = 32,
               widths: Sequence[int] = (32, 64, 128), *, dtype=F32, rngs: nnx.Rngs):
    c1, c2, c3 = widths
    if in_channels == out_channels:
      raise ValueError("the reference's stem has a conv skip only when in_channels != out_channels")
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


class PatchEmbed(nnx.Module):
  """Conv1d with kernel = stride = patch_len (with bias): (B, L, C) -> (B, L / P, D).

  Computed as a reshape and one matmul; kernel (P, C, D).
  """

  def __init__(self, in_channels: int, d_model: int, patch_len: int, *, dtype=F32,
               rngs: nnx.Rngs):
    fan_in = in_channels * patch_len
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(torch_default_init(kk, (patch_len, in_channels, d_model), fan_in))
    self.bias = nnx.Param(torch_default_init(kb, (d_model,), fan_in))
    self.patch_len = patch_len
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    b, length, c = x.shape
    p = self.patch_len
    d = self.kernel.shape[-1]
    xp = x.reshape(b, length // p, p * c).astype(self.dtype)
    return linear(xp, self.kernel[...].reshape(p * c, d).astype(self.dtype)) + self.bias[...].astype(
        self.dtype)


class WaveformDecoder(nnx.Module):
  """ConvTranspose1d(D -> out, kernel = stride = patch_len): tokens (B, N, D) -> (B, N * P, out).

  Kernel (D, P, out) (torch stores (D, out, P)); one matmul and a reshape. Its output is float32.
  """

  def __init__(self, d_model: int, patch_len: int, out_channels: int = 1, *, dtype=F32,
               rngs: nnx.Rngs):
    # torch computes ConvTranspose fan-in from weight.size(1) * k = out_channels * patch_len.
    fan_in = out_channels * patch_len
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(
        torch_default_init(kk, (d_model, patch_len, out_channels), fan_in))
    self.bias = nnx.Param(torch_default_init(kb, (out_channels,), fan_in))
    self.dtype = dtype

  def __call__(self, tokens: Array) -> Array:
    b, n, d = tokens.shape
    _, p, c = self.kernel.shape
    y = linear(tokens.astype(self.dtype), self.kernel[...].reshape(d, p * c).astype(self.dtype))
    return y.astype(F32).reshape(b, n * p, c) + self.bias[...]


# ----------------------------------------------------------------------------------------------
# Attention blocks.
# ----------------------------------------------------------------------------------------------
class MultiheadAttention(nnx.Module):
  """torch nn.MultiheadAttention (batch_first, bias, dropout on the attention weights).

  Parameters: `in_kernel` (D, 3D) = in_proj_weight.T, `in_bias` (3D,), `out_kernel` (D, D) =
  out_proj.weight.T, `out_bias` (D,). Heads split D contiguously as torch does.
  """

  def __init__(self, d_model: int, num_heads: int, *, dropout: float = 0.0, dtype=F32,
               rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    ki, ko = jax.random.split(rngs.params())
    # torch: xavier_uniform_ on in_proj_weight (3D, D), zero biases, Linear default for out_proj.
    self.in_kernel = nnx.Param(xavier_uniform_init(ki, (d_model, 3 * d_model), d_model,
                                                   3 * d_model))
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

  def __call__(self, q_in: Array, kv_in: Array | None = None, *, key: Array | None = None
               ) -> Array:
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


def gelu(x: Array) -> Array:
  """Exact GELU as torch computes it, x * (1 + erf(x / sqrt 2)) / 2.

  `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU expands into a far costlier
  kernel (exp, divisions and range selects): the MLPs' GELU forward and backward took as long as
  their matmuls. erf is a short rational polynomial, and is the form of the reference.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype)))


class MLP(nnx.Module):
  """Linear -> exact GELU -> Linear -> Dropout (the reference's `mlp`/`ffn` tail)."""

  def __init__(self, d_model: int, hidden: int, *, dropout: float = 0.0, dtype=F32,
               rngs: nnx.Rngs):
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

  def __init__(self, d_model: int, num_heads: int, *, mlp_ratio: float = 4.0,
               dropout: float = 0.1, dtype=F32, rngs: nnx.Rngs):
    self.norm1 = LayerNorm(d_model, dtype=dtype)
    self.attn = MultiheadAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.norm2 = LayerNorm(d_model, dtype=dtype)
    self.mlp = MLP(d_model, int(mlp_ratio * d_model), dropout=dropout, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, key: Array | None = None) -> Array:
    k_attn, k_mlp = _split_keys(key, 2)
    x = x + self.attn(self.norm1(x), key=k_attn)
    return x + self.mlp(self.norm2(x), k_mlp)


class CrossAttentionBlock(nnx.Module):
  """The reference's CrossAttentionBlock: x = q + MHA(LN_q(q), LN_kv(kv)); x += FFN(x), with
  FFN = LN -> Linear(D, 4D) -> GELU -> Linear -> Dropout."""

  def __init__(self, d_model: int, num_heads: int, *, dropout: float = 0.1, dtype=F32,
               rngs: nnx.Rngs):
    self.norm_q = LayerNorm(d_model, dtype=dtype)
    self.norm_kv = LayerNorm(d_model, dtype=dtype)
    self.attn = MultiheadAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.ffn_norm = LayerNorm(d_model, dtype=dtype)
    self.ffn = MLP(d_model, 4 * d_model, dropout=dropout, dtype=dtype, rngs=rngs)

  def __call__(self, q: Array, kv: Array, key: Array | None = None) -> Array:
    k_attn, k_ffn = _split_keys(key, 2)
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

  def __init__(self, *, seq_len: int, patch_len: int, d_model: int, num_heads: int, depth: int,
               stem_channels: int, stem_widths: Sequence[int], dropout: float, latent_dim: int,
               mlp_ratio: float = 4.0, build_proj: bool = True, dtype=F32, rngs: nnx.Rngs):
    if seq_len % patch_len:
      raise ValueError(f"seq_len {seq_len} is not a multiple of patch_len {patch_len}")
    if patch_len % 4:
      raise ValueError(f"patch_len {patch_len} must be a multiple of 4 (the stem halves twice)")
    self.seq_len, self.patch_len = seq_len, patch_len
    self.num_patches = seq_len // patch_len
    self.d_model = d_model
    self.stem = UNetInceptionStem(1, stem_channels, stem_widths, dtype=dtype, rngs=rngs)
    self.patch = PatchEmbed(stem_channels, d_model, patch_len, dtype=dtype, rngs=rngs)
    self.pos = nnx.Param(normal_init(rngs.params(), (1, self.num_patches, d_model), 0.02))
    self.blocks = nnx.List([
        TransformerBlock(d_model, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, dtype=dtype,
                         rngs=rngs) for _ in range(depth)])
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
    if ids is None or mode == "compact":
      return pos[:, :count]
    if mode == "true":
      return jnp.take(pos[0], ids, axis=0)
    raise ValueError(f"unknown visible_positions {mode!r}; expected 'compact' or 'true'")

  def tokens(self, x: Array, ids_keep: Array | None = None, *, positions: str = "compact",
             key: Array | None = None) -> Array:
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
    for blk, k in zip(self.blocks, _split_keys(key, len(self.blocks))):
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

  def __init__(self, *, seq_len: int, patch_len: int, d_model: int, num_heads: int, depth: int,
               stem_channels: int, stem_widths: Sequence[int], dropout: float, latent_dim: int,
               build_decoder: bool = True, build_mask_loc: bool = True, build_proj: bool = True,
               dtype=F32, rngs: nnx.Rngs):
    self.encoder = PathEncoder(
        seq_len=seq_len, patch_len=patch_len, d_model=d_model, num_heads=num_heads, depth=depth,
        stem_channels=stem_channels, stem_widths=stem_widths, dropout=dropout,
        latent_dim=latent_dim, build_proj=build_proj, dtype=dtype, rngs=rngs)
    n = self.encoder.num_patches
    if build_decoder:
      self.dec_block = TransformerBlock(d_model, num_heads, mlp_ratio=2.0, dropout=dropout,
                                        dtype=dtype, rngs=rngs)
      self.decoder = WaveformDecoder(d_model, patch_len, 1, dtype=dtype, rngs=rngs)
    else:
      self.dec_block = self.decoder = None
    self.mask_loc_table = (
        nnx.Param(xavier_uniform_init(rngs.params(), (n, d_model), d_model, n))
        if build_mask_loc else None)
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
    table = jnp.broadcast_to(self.mask_loc_table[...].astype(t_vis.dtype)[None],
                             (b, self.num_patches, d))
    return scatter_tokens(table, ids_keep, t_nopos) + pos.astype(t_vis.dtype)

  def decode_tokens(self, tokens: Array, key: Array | None = None) -> Array:
    """Full-length tokens (B, N, D) -> waveform (B, L) float32: dec_block then decoder."""
    return self.decoder(self.dec_block(tokens, key))[..., 0]

  def decode_visible(self, t_vis: Array, ids_keep: Array, mask_token: Array,
                     key: Array | None = None) -> Array:
    """MAE-style decoding (the reference's decode_full_wave): visible tokens at their indices,
    `mask_token` (1, 1, D) elsewhere, + pos, then decode_tokens. When nothing is masked the
    tokens are decoded as they are (no pos re-added), as in the reference."""
    b, nk, d = t_vis.shape
    n = self.num_patches
    if nk != n:
      full = jnp.broadcast_to(mask_token.astype(t_vis.dtype), (b, n, d))
      t_vis = scatter_tokens(full, ids_keep, t_vis) + self.encoder.pos[...].astype(t_vis.dtype)
    return self.decode_tokens(t_vis, key)
