"""The layers of an exported encoder in PyTorch, and `build_module`: a package's tensors ({Flax
name: array}) -> the `torch.nn.Module` with every tensor loaded. Layouts and the BatchNorm
choice are described in xmae_jax.interop.torch_encoder, which loads packages with it. No JAX
or Flax is imported here."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xmae_jax.errors import XmaeError

# M2AE's modality ids in its learned modality embeddings, and the order in which a joint
# fingerprint concatenates tokens (xmae_jax.models.m2ae.MODALITIES).
M2AE_ORDER = ("ecg", "ppg")
EPS = 1e-5


class TorchEncoderError(XmaeError):
  """A package this module cannot rebuild, or input `embed` cannot use."""


# ---- layers ------------------------------------------------------------------------------------


class ConvBNAct(nn.Module):
  """Conv1d (no bias, padding k // 2) -> BatchNorm1d -> SiLU."""

  def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
    super().__init__()
    self.conv = nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    self.bn = nn.BatchNorm1d(cout, eps=EPS)

  def forward(self, x):
    return F.silu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
  """Branch convolutions (k = 3, 5, 7) -> concat -> one BatchNorm -> SiLU -> 1x1 ConvBNAct."""

  def __init__(self, cin: int, widths: list[int], kernel_sizes=(3, 5, 7)):
    super().__init__()
    self.branches = nn.ModuleList(
        [nn.Conv1d(cin, w, k, padding=k // 2, bias=False) for k, w in zip(kernel_sizes, widths)]
    )
    cout = sum(widths)
    self.branch_bn = nn.BatchNorm1d(cout, eps=EPS)
    self.fuse = ConvBNAct(cout, cout, 1)

  def forward(self, x):
    y = torch.cat([conv(x) for conv in self.branches], dim=1)
    return self.fuse(F.silu(self.branch_bn(y)))


class Stem(nn.Module):
  """The reference's UNetHalfInceptionStem1D on (B, 1, L) -> (B, out, L)."""

  def __init__(self, out_channels: int, widths: tuple[int, int, int], split):
    super().__init__()
    c1, c2, c3 = widths
    self.enc1 = nn.ModuleList([InceptionBlock(1, split(c1)), InceptionBlock(c1, split(c1))])
    self.down1 = ConvBNAct(c1, c2, 3, stride=2)
    self.enc2 = nn.ModuleList([InceptionBlock(c2, split(c2)), InceptionBlock(c2, split(c2))])
    self.down2 = ConvBNAct(c2, c3, 3, stride=2)
    self.enc3 = nn.ModuleList([InceptionBlock(c3, split(c3)), InceptionBlock(c3, split(c3))])
    self.lat2 = nn.Conv1d(c2, c2, 1, bias=False)
    self.lat1 = nn.Conv1d(c1, c1, 1, bias=False)
    self.red3to2 = nn.Conv1d(c3, c2, 1, bias=False)
    self.red2to1 = nn.Conv1d(c2, c1, 1, bias=False)
    self.smooth2 = ConvBNAct(c2, c2, 3)
    self.smooth1 = ConvBNAct(c1, c1, 3)
    self.head = ConvBNAct(c1, out_channels, 3)
    self.skip = nn.Conv1d(1, out_channels, 1, bias=False)
    self.skip_bn = nn.BatchNorm1d(out_channels, eps=EPS)

  def forward(self, x):
    e1 = x
    for blk in self.enc1:
      e1 = blk(e1)
    e2 = self.down1(e1)
    for blk in self.enc2:
      e2 = blk(e2)
    e3 = self.down2(e2)
    for blk in self.enc3:
      e3 = blk(e3)
    up = lambda t, n: F.interpolate(t, size=n, mode="linear", align_corners=False)  # noqa: E731
    t2 = self.smooth2(self.lat2(e2) + up(self.red3to2(e3), e2.shape[-1]))
    t1 = self.smooth1(self.lat1(e1) + up(self.red2to1(t2), e1.shape[-1]))
    return self.head(t1) + self.skip_bn(self.skip(x))


class Block(nn.Module):
  """Pre-LN transformer block: x += MHA(LN(x)); x += MLP(LN(x)) (exact GELU)."""

  def __init__(self, d: int, heads: int, hidden: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(d, eps=EPS)
    self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
    self.norm2 = nn.LayerNorm(d, eps=EPS)
    self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

  def forward(self, x):
    h = self.norm1(x)
    x = x + self.attn(h, h, h, need_weights=False)[0]
    return x + self.mlp(self.norm2(x))


class PathEncoder(nn.Module):
  """(B, L) -> tokens (B, N, D) (`tokens`), or the pooled projection (B, latent) when built
  with `latent_dim` (xMAE's exported encoder)."""

  def __init__(
      self,
      *,
      patch_len: int,
      num_patches: int,
      d_model: int,
      heads: int,
      depth: int,
      hidden: int,
      stem_channels: int,
      stem_widths,
      split,
      latent_dim: int | None,
  ):
    super().__init__()
    self.stem = Stem(stem_channels, stem_widths, split)
    self.patch = nn.Conv1d(stem_channels, d_model, patch_len, stride=patch_len)
    self.pos = nn.Parameter(torch.zeros(1, num_patches, d_model))
    self.blocks = nn.ModuleList([Block(d_model, heads, hidden) for _ in range(depth)])
    if latent_dim is not None:
      self.proj_norm = nn.LayerNorm(d_model, eps=EPS)
      self.proj = nn.Linear(d_model, latent_dim)
    else:
      self.proj_norm = self.proj = None

  def tokens(self, x):
    t = self.patch(self.stem(x[:, None, :])).transpose(1, 2)
    t = t + self.pos[:, : t.shape[1]]
    for blk in self.blocks:
      t = blk(t)
    return t

  def forward(self, x):
    return self.proj(self.proj_norm(self.tokens(x).mean(dim=1)))


class Bottleneck(nn.Module):
  """M2AE's shared bottleneck: tokens + modality embedding -> blocks -> LN -> Linear."""

  def __init__(self, *, d_model: int, heads: int, depth: int, hidden: int, latent_dim: int):
    super().__init__()
    self.modality_embed = nn.Parameter(torch.zeros(len(M2AE_ORDER), d_model))
    self.blocks = nn.ModuleList([Block(d_model, heads, hidden) for _ in range(depth)])
    self.norm = nn.LayerNorm(d_model, eps=EPS)
    self.proj = nn.Linear(d_model, latent_dim)

  def forward(self, parts: list[tuple[torch.Tensor, str]]):
    x = torch.cat([t + self.modality_embed[M2AE_ORDER.index(m)] for t, m in parts], dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.proj(self.norm(x))


class Fingerprint(nn.Module):
  """M2AE's fingerprint: the mean of the bottleneck's latent tokens over the given modalities
  (either or both, concatenated in M2AE's order), as `M2AE.fingerprint`."""

  def __init__(self, encoders: dict[str, PathEncoder], bottleneck: Bottleneck):
    super().__init__()
    self.encoders = nn.ModuleDict(encoders)
    self.bottleneck = bottleneck

  def forward(self, ppg=None, ecg=None):
    given = {"ppg": ppg, "ecg": ecg}
    parts = [
        (self.encoders[m].tokens(given[m]), m)
        for m in M2AE_ORDER
        if given[m] is not None and m in self.encoders
    ]
    return self.bottleneck(parts).mean(dim=1)


# ---- building from a package -------------------------------------------------------------------


def _split(out_channels: int, n: int = 3) -> list[int]:
  """The stem's Inception channel split (xmae_jax.models.stem.inception_split)."""
  mid = out_channels // n
  return [mid] * (n - 1) + [out_channels - mid * (n - 1)]


def _count(tensors: dict, prefix: str) -> int:
  """How many `prefix.K.` sub-modules the tensors name (the depth of a block list)."""
  ids = {int(k[len(prefix) + 1 :].split(".")[0]) for k in tensors if k.startswith(prefix + ".")}
  return max(ids) + 1 if ids else 0


def _path_encoder(tensors, prefix: str, model: dict, with_proj: bool) -> PathEncoder:
  pos = tensors[f"{prefix}pos"]
  patch = tensors[f"{prefix}patch.kernel"]  # (P, C, D)
  fc1 = tensors.get(f"{prefix}blocks.0.mlp.fc1.kernel")  # absent when depth is 0
  hidden = fc1.shape[1] if fc1 is not None else 4 * patch.shape[2]
  return PathEncoder(
      patch_len=patch.shape[0],
      num_patches=pos.shape[1],
      d_model=patch.shape[2],
      heads=int(model["num_heads"]),
      depth=_count(tensors, f"{prefix}blocks"),
      hidden=hidden,
      stem_channels=patch.shape[1],
      stem_widths=tuple(int(w) for w in model["stem_widths"]),
      split=_split,
      latent_dim=tensors[f"{prefix}proj.kernel"].shape[1] if with_proj else None,
  )


def _bottleneck(tensors, model: dict) -> Bottleneck:
  d = tensors["bottleneck.modality_embed"].shape[1]
  return Bottleneck(
      d_model=d,
      heads=int(model["num_heads"]),
      depth=_count(tensors, "bottleneck.blocks"),
      hidden=tensors["bottleneck.blocks.0.mlp.fc1.kernel"].shape[1],
      latent_dim=tensors["bottleneck.proj.kernel"].shape[1],
  )


def _torch_names(module: nn.Module, prefix: str, flax_prefix: str) -> dict[str, tuple[str, Any]]:
  """{torch state-dict name: (package tensor name, transform)} of one module's tensors."""
  out = {}

  def linear(t, f):
    out[f"{t}.weight"] = (f"{f}.kernel", lambda a: a.T)
    out[f"{t}.bias"] = (f"{f}.bias", None)

  def conv(t, f):
    out[f"{t}.weight"] = (f"{f}.kernel", lambda a: a.transpose(2, 1, 0))

  def bn(t, f):
    for ours, theirs in (
        ("weight", "scale"),
        ("bias", "bias"),
        ("running_mean", "mean"),
        ("running_var", "var"),
    ):
      out[f"{t}.{ours}"] = (f"{f}.{theirs}", None)

  def norm(t, f):
    out[f"{t}.weight"] = (f"{f}.scale", None)
    out[f"{t}.bias"] = (f"{f}.bias", None)

  def block(t, f):
    norm(f"{t}.norm1", f"{f}.norm1")
    norm(f"{t}.norm2", f"{f}.norm2")
    out[f"{t}.attn.in_proj_weight"] = (f"{f}.attn.in_kernel", lambda a: a.T)
    out[f"{t}.attn.in_proj_bias"] = (f"{f}.attn.in_bias", None)
    out[f"{t}.attn.out_proj.weight"] = (f"{f}.attn.out_kernel", lambda a: a.T)
    out[f"{t}.attn.out_proj.bias"] = (f"{f}.attn.out_bias", None)
    linear(f"{t}.mlp.0", f"{f}.mlp.fc1")
    linear(f"{t}.mlp.2", f"{f}.mlp.fc2")

  def cba(t, f):
    conv(f"{t}.conv", f"{f}.conv")
    bn(f"{t}.bn", f"{f}.bn")

  if isinstance(module, PathEncoder):
    s, fs = f"{prefix}stem", f"{flax_prefix}stem"
    for stage in ("enc1", "enc2", "enc3"):
      for i in range(2):
        t, f = f"{s}.{stage}.{i}", f"{fs}.{stage}.{i}"
        for j in range(3):
          out[f"{t}.branches.{j}.weight"] = (
              f"{f}.branch_kernels.{j}",
              lambda a: a.transpose(2, 1, 0),
          )
        bn(f"{t}.branch_bn", f"{f}.branch_bn")
        cba(f"{t}.fuse", f"{f}.fuse")
    for name in ("down1", "down2", "smooth2", "smooth1", "head"):
      cba(f"{s}.{name}", f"{fs}.{name}")
    for name in ("lat2", "lat1", "red3to2", "red2to1", "skip"):
      conv(f"{s}.{name}", f"{fs}.{name}")
    bn(f"{s}.skip_bn", f"{fs}.skip_bn")
    conv(f"{prefix}patch", f"{flax_prefix}patch")
    out[f"{prefix}patch.bias"] = (f"{flax_prefix}patch.bias", None)
    out[f"{prefix}pos"] = (f"{flax_prefix}pos", None)
    for i in range(len(module.blocks)):
      block(f"{prefix}blocks.{i}", f"{flax_prefix}blocks.{i}")
    if module.proj is not None:
      norm(f"{prefix}proj_norm", f"{flax_prefix}proj_norm")
      linear(f"{prefix}proj", f"{flax_prefix}proj")
  elif isinstance(module, Bottleneck):
    out[f"{prefix}modality_embed"] = ("bottleneck.modality_embed", None)
    for i in range(len(module.blocks)):
      block(f"{prefix}blocks.{i}", f"bottleneck.blocks.{i}")
    norm(f"{prefix}norm", "bottleneck.norm")
    linear(f"{prefix}proj", "bottleneck.proj")
  return out


def build_module(
    tensors: dict[str, np.ndarray], model: dict, modalities: tuple[str, ...]
) -> nn.Module:
  """The torch module of a package's tensors ({Flax name: array}) and model config section,
  with every tensor loaded (strictly: a missing or unused tensor is an error)."""
  if "bottleneck.modality_embed" in tensors:  # M2AE
    if "path.pos" in tensors:  # one modality's fingerprint encoder
      encoders = {modalities[0]: ("path.", _path_encoder(tensors, "path.", model, False))}
    else:
      encoders = {
          m: (f"{m}_encoder.", _path_encoder(tensors, f"{m}_encoder.", model, False))
          for m in modalities
      }
    module = Fingerprint({m: e for m, (_, e) in encoders.items()}, _bottleneck(tensors, model))
    names = {}
    for m, (flax_prefix, enc) in encoders.items():
      names.update(_torch_names(enc, f"encoders.{m}.", flax_prefix))
    names.update(_torch_names(module.bottleneck, "bottleneck.", "bottleneck."))
  elif "pos" in tensors:  # xMAE / baselines: a PathEncoder
    module = _path_encoder(tensors, "", model, True)
    names = _torch_names(module, "", "")
  else:
    raise TorchEncoderError(
        "no encoder layout this module knows (expected tensors `pos`, "
        "`path.pos` or `ppg_encoder.pos` with `bottleneck.*`)"
    )
  _load(module, tensors, names)
  return module.eval()


def _load(module: nn.Module, tensors: dict, names: dict) -> None:
  state = module.state_dict()
  wanted = {k for k in state if not k.endswith("num_batches_tracked")}
  missing = sorted(wanted - set(names))
  unused = sorted(set(tensors) - {f for f, _ in names.values()})
  absent = sorted(f for k, (f, _) in names.items() if f not in tensors)
  if missing or unused or absent:
    raise TorchEncoderError(
        f"package tensors do not fit the rebuilt encoder: {len(absent)} absent (e.g. "
        f"{absent[:1]}), {len(unused)} unused (e.g. {unused[:1]}), {len(missing)} unmapped"
    )
  new = {}
  for k, (f, transform) in names.items():
    a = np.asarray(tensors[f], np.float32)
    a = transform(a) if transform else a
    if tuple(a.shape) != tuple(state[k].shape):
      raise TorchEncoderError(
          f"tensor {f}: shape {a.shape} does not fit {k} " f"{tuple(state[k].shape)}"
      )
    new[k] = torch.from_numpy(np.ascontiguousarray(a))
  module.load_state_dict(new, strict=False)
