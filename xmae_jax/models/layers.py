"""Elementary layers of the xMAE, M2AE and baseline models (Flax NNX, channels-last).

This file holds what every model is built from: torch-default initializers, the keyed hash
generator behind dropout, the compute dtype, and the elementary layers (linear with its custom
gradient, Dense, LayerNorm, BatchNorm, GELU, Dropout, convolutions, patch embedding and the
transposed-convolution waveform head). Composite pieces live beside it: `stem.py` (the
reference's Inception stem) and `path.py` (attention, transformer blocks, one modality's path).

Every layer reproduces the PyTorch module of the xMAE reference (hzhou3/xMAE,
`utils/model_arch/xmae.py`) numerically, so that its weights can be imported
(`xmae_jax.interop.reference`) and outputs match within float32 rounding:

* LayerNorm and BatchNorm use eps 1e-5; GELU is the exact erf form (torch's default).
* `BatchNorm` follows torch: training normalizes with the biased batch variance and updates the
  running variance with the unbiased one, momentum 0.1 (new = 0.9 * old + 0.1 * batch).
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
`use_running_average` (BatchNorm) on every block built from these layers.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax.errors import XmaeError

Array = jax.Array
F32 = jnp.float32

# `train.compute_dtype` names -> dtypes; parameters stay float32 whatever the compute dtype.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config) -> jnp.dtype:
  """The dtype matmuls and convolutions run in, from `config.train.compute_dtype` (float32
  when the config has no train section, as an exported encoder's)."""
  name = config.train.get("compute_dtype", "float32") if "train" in config else "float32"
  if name not in COMPUTE_DTYPES:
    raise XmaeError(f"train.compute_dtype {name!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


# ----------------------------------------------------------------------------------------------
# Initializers matching torch's defaults.
#
# Building a model eagerly would compile every random op once per parameter shape, which is slow
# on CPU. So draws go through ONE jitted function over a few power-of-two sizes and are
# cut to shape on the host; under tracing (jit, eval_shape) the same draw is sliced in-graph, so
# both paths give the same values. Constants are numpy arrays (no compilation at all).
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("size", "normal"))
def _draw(key, scale, *, size: int, normal: bool):
  # Inlined in a larger jit (the sharded initial state, training.state), `scale` would be a
  # constant that XLA folds into the draw's own constants, an ulp off the eager draw, where it
  # is an argument; behind the barrier it stays one, and both give the same bits.
  scale = jax.lax.optimization_barrier(scale)
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


# ----------------------------------------------------------------------------------------------
# Randomness: the keyed hash behind dropout masks, and key splitting for keyless (eval) calls.
# ----------------------------------------------------------------------------------------------
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
  and vectorizes, where XLA:CPU's RngBitGenerator (and threefry, which also compiled slowly) made
  drawing the dropout bits a visible part of the paper train step. Dropout needs independent
  uniform bits, not a cryptographic generator; a mask depends only on the key and the shape.
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  data = data.reshape(-1).astype(jnp.uint32)
  k0, k1 = data[0], data[-1] ^ jnp.uint32(0x68E31DA4)
  n = math.prod(shape)
  if n >= 2**32:
    raise ValueError(f"dropout mask of {n} elements: at most 2^32 - 1 supported")
  counter = jax.lax.iota(jnp.uint32, n).reshape(tuple(shape))
  bits = _mix32(_mix32(counter * jnp.uint32(0x9E3779B9) + k0) ^ k1)
  threshold = min(int(round(keep_prob * 2.0**32)), 2**32 - 1)
  return bits < jnp.uint32(threshold)


def split_keys(key: Array | None, n: int) -> list[Array | None]:
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
  both operands. XLA:CPU runs that form with Eigen, markedly slower than a plain
  (M, K) x (K, N) matmul, which it hands to YNNPACK; on the paper train step those dots were a
  large share of the time. The backward pass below materializes the narrower of x and the output
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
  if x2.shape[1] <= g2.shape[1]:  # transpose the narrower of the two activations
    dkernel = jnp.matmul(_materialized_t(x2), g2)
  else:
    dkernel = _materialized_t(jnp.matmul(_materialized_t(g2), x2))
  return dx, dkernel.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Module):
  """torch nn.Linear with a (in, out) kernel; computes in `dtype`."""

  def __init__(
      self, in_features: int, out_features: int, *, use_bias: bool = True, dtype=F32, rngs: nnx.Rngs
  ):
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(torch_default_init(kk, (in_features, out_features), in_features))
    self.bias = (
        nnx.Param(torch_default_init(kb, (out_features,), in_features)) if use_bias else None
    )
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


SHIFT_ROWS = 64  # batch_moments' shift: the mean of this many leading rows


def leading_rows(x: Array, n: int) -> Array:
  """The first `n` rows (at most) of `x` flattened to (rows, channels), row-major over every
  axis but the last, read so that a batch-sharded `x` needs one all-reduce, whatever the mesh.

  `x.reshape(-1, C)[:n]` is the same array, but its rows lie on the device(s) holding the first
  examples, and the partitioner sends them from there to every other device: one
  collective-permute per other device and call, so their number grew with the slice (BatchNorm
  calls this in every training forward pass). Here each example the rows span is picked out by
  a maximum over the batch axis of the example and -inf for every other: each device reduces
  its own rows and one all-reduce (max, of n x C floats) gives the rows themselves, bit for bit,
  on every topology. A maximum, not a masked sum: XLA would merge a sum into the caller's
  reduction of the rows and change its order of summation (and rounding).
  """
  lead, c = x.shape[0], x.shape[-1]
  per_example = math.prod(x.shape[1:-1])
  rows = min(n, lead * per_example)
  xs = x.reshape(lead, per_example, c)[:, : min(per_example, rows)]
  examples = -(-rows // xs.shape[1])
  which = jax.lax.broadcasted_iota(jnp.int32, (examples, lead), 1)
  pick = which == jnp.arange(examples, dtype=jnp.int32)[:, None]
  head = jnp.max(jnp.where(pick[:, :, None, None], xs[None], -jnp.inf), axis=1)
  return head.reshape(-1, c)[:rows]


def batch_moments(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  """Mean and biased variance of `x` over `axes` (all but the last), in one pass over `x`.

  Both come from the sums of d = x - shift and d^2: two reductions of the same input, which XLA
  computes in one read of the (large) activation, where the two-pass form (the mean first, then
  the mean squared deviation) reads it twice and has a longer backward pass. The per-channel
  shift, the mean of the first (up to) 64 rows (`leading_rows`), lies within a few standard
  deviations of the mean, which keeps m2 - m1^2 well conditioned whatever the offset of the
  data: the variance matches the two-pass one within float32 rounding.
  """
  shift = jax.lax.stop_gradient(jnp.mean(leading_rows(x, SHIFT_ROWS), axis=0))
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

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5, dtype=F32):
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


def gelu(x: Array) -> Array:
  """Exact GELU as torch computes it, x * (1 + erf(x / sqrt 2)) / 2.

  `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU expands into a far costlier
  kernel (exp, divisions and range selects) in the MLPs' forward and backward passes. erf is a
  short rational polynomial, and is the form of the reference.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype)))


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


# ----------------------------------------------------------------------------------------------
# Convolutions (torch Conv1d / ConvTranspose1d, as channels-last matmuls where they can be).
# ----------------------------------------------------------------------------------------------
def conv1d(x: Array, kernel: Array, *, stride: int = 1, padding: int = 0, dtype=F32) -> Array:
  """Channels-last 1-D convolution (torch Conv1d semantics, symmetric zero padding)."""
  if kernel.shape[0] == 1 and stride == 1 and padding == 0:
    return linear(x.astype(dtype), kernel[0].astype(dtype))  # 1x1 conv: a matmul
  return jax.lax.conv_general_dilated(
      x.astype(dtype),
      kernel.astype(dtype),
      window_strides=(stride,),
      padding=[(padding, padding)],
      dimension_numbers=("NWC", "WIO", "NWC"),
  )


class Conv1d(nnx.Module):
  """torch nn.Conv1d (bias optional), kernel (k, in, out), padding k // 2 by default."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size: int,
      *,
      stride: int = 1,
      padding: int | None = None,
      use_bias: bool = False,
      dtype=F32,
      rngs: nnx.Rngs,
  ):
    fan_in = in_channels * kernel_size
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(
        torch_default_init(kk, (kernel_size, in_channels, out_channels), fan_in)
    )
    self.bias = nnx.Param(torch_default_init(kb, (out_channels,), fan_in)) if use_bias else None
    self.stride = stride
    self.padding = kernel_size // 2 if padding is None else padding
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    y = conv1d(x, self.kernel[...], stride=self.stride, padding=self.padding, dtype=self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class PatchEmbed(nnx.Module):
  """Conv1d with kernel = stride = patch_len (with bias): (B, L, C) -> (B, L / P, D).

  Computed as a reshape and one matmul; kernel (P, C, D).
  """

  def __init__(self, in_channels: int, d_model: int, patch_len: int, *, dtype=F32, rngs: nnx.Rngs):
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
    return linear(xp, self.kernel[...].reshape(p * c, d).astype(self.dtype)) + self.bias[
        ...
    ].astype(self.dtype)


class WaveformDecoder(nnx.Module):
  """ConvTranspose1d(D -> out, kernel = stride = patch_len): tokens (B, N, D) -> (B, N * P, out).

  Kernel (D, P, out) (torch stores (D, out, P)); one matmul and a reshape. Its output is float32.
  """

  def __init__(
      self, d_model: int, patch_len: int, out_channels: int = 1, *, dtype=F32, rngs: nnx.Rngs
  ):
    # torch computes ConvTranspose fan-in from weight.size(1) * k = out_channels * patch_len.
    fan_in = out_channels * patch_len
    kk, kb = jax.random.split(rngs.params())
    self.kernel = nnx.Param(torch_default_init(kk, (d_model, patch_len, out_channels), fan_in))
    self.bias = nnx.Param(torch_default_init(kb, (out_channels,), fan_in))
    self.dtype = dtype

  def __call__(self, tokens: Array) -> Array:
    b, n, d = tokens.shape
    _, p, c = self.kernel.shape
    y = linear(tokens.astype(self.dtype), self.kernel[...].reshape(d, p * c).astype(self.dtype))
    return y.astype(F32).reshape(b, n * p, c) + self.bias[...]
