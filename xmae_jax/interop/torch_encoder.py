"""An exported encoder package in pure PyTorch: `load(package_dir).embed(x, fs)`, no JAX.

Every package written by `xmae-export` (xmae_jax.evaluation.package) can be loaded here: this
module rebuilds the encoder as a `torch.nn.Module` from the package's `config.json` and
`package.json`, and loads its `encoder.safetensors`. Nothing in its import chain imports JAX
or Flax (tests/interop/test_torch_encoder.py checks it in a fresh process), so a PyTorch user
needs numpy, scipy, safetensors and torch (NeuroKit2 too, for raw input that is cleaned).

  enc = load("PACKAGE")                       # xMAE (or a baseline's) PPG encoder, or M2AE's
  z = enc.embed(x, fs=125)                    # (N, L) raw or prepared -> (N, latent) numpy
  z = enc.embed(ppg=p, ecg=e, fs=125)         # a ppg+ecg (M2AE joint fingerprint) package
  z = enc(torch.as_tensor(windows))           # prepared (B, 1000) windows -> (B, latent) tensor

Modules (their forward passes are the Flax ones of xmae_jax.models, channels-first as torch's):
  PathEncoder     stem -> patch conv -> + positions -> pre-LN blocks [-> mean -> LN -> Linear]:
                  xMAE's and the baselines' exported encoder (package tensors at the root)
  Fingerprint     M2AE: modality encoders (no projection) -> shared bottleneck -> mean over the
                  latent tokens of the given modalities (`path.*` for a one-modality package,
                  `ppg_encoder.*` / `ecg_encoder.*` for the joint ppg+ecg package)

Layouts: Flax kernels are transposed to torch's (Linear (in, out) -> weight (out, in); Conv
(width, in, out) -> (out, in, width); the packed attention projection (D, 3D) ->
`in_proj_weight` (3D, D)). BatchNorm is NOT folded into the convolutions: each becomes a
`torch.nn.BatchNorm1d` holding the package's scale, bias and running mean/var (eps 1e-5), so
the module can be fine-tuned as it is; in eval mode (what `load` returns) it normalizes with the
running statistics, as the JAX encoder does. LayerNorm is `torch.nn.LayerNorm` (eps 1e-5),
GELU the exact erf form, attention `torch.nn.MultiheadAttention`. Everything computes in
float32 (a package trained with bfloat16 compute embeds in float32 here).

Preprocessing is the JAX path's (`Encoder.prepare` in xmae_jax.evaluation.encoder), from the
contract the package carries: rows of the contract's length at its rate are min-max normalized
per window; anything else is cleaned with NeuroKit2 (`clean=None`; True/False forces it),
resampled to the contract's rate, cut into contract-length windows and normalized
(xmae_jax.data.preprocess.prepare_for_inference), and a row's window embeddings are averaged.
Raw rows are recordings whose PPG is moved as the package's training data's was, as the JAX
`embed` does (xmae_jax.data.preprocess.align_rows: measured on the row's ECG when `ecg=` is
given, else the fixed delay); `last_alignment` says what was applied, `align=False` skips it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xmae_jax.data import preprocess
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import package as package_lib

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
    self.branches = nn.ModuleList([nn.Conv1d(cin, w, k, padding=k // 2, bias=False)
                                   for k, w in zip(kernel_sizes, widths)])
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

  def __init__(self, *, patch_len: int, num_patches: int, d_model: int, heads: int, depth: int,
               hidden: int, stem_channels: int, stem_widths, split, latent_dim: int | None):
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
    t = t + self.pos[:, :t.shape[1]]
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
    parts = [(self.encoders[m].tokens(given[m]), m) for m in M2AE_ORDER
             if given[m] is not None and m in self.encoders]
    return self.bottleneck(parts).mean(dim=1)


# ---- building from a package -------------------------------------------------------------------

def _split(out_channels: int, n: int = 3) -> list[int]:
  """The stem's Inception channel split (xmae_jax.models.stem.inception_split)."""
  mid = out_channels // n
  return [mid] * (n - 1) + [out_channels - mid * (n - 1)]


def _count(tensors: dict, prefix: str) -> int:
  """How many `prefix.K.` sub-modules the tensors name (the depth of a block list)."""
  ids = {int(k[len(prefix) + 1:].split(".")[0]) for k in tensors if k.startswith(prefix + ".")}
  return max(ids) + 1 if ids else 0


def _path_encoder(tensors, prefix: str, model: dict, with_proj: bool) -> PathEncoder:
  pos = tensors[f"{prefix}pos"]
  patch = tensors[f"{prefix}patch.kernel"]      # (P, C, D)
  fc1 = tensors.get(f"{prefix}blocks.0.mlp.fc1.kernel")     # absent when depth is 0
  hidden = fc1.shape[1] if fc1 is not None else 4 * patch.shape[2]
  return PathEncoder(
      patch_len=patch.shape[0], num_patches=pos.shape[1], d_model=patch.shape[2],
      heads=int(model["num_heads"]), depth=_count(tensors, f"{prefix}blocks"), hidden=hidden,
      stem_channels=patch.shape[1], stem_widths=tuple(int(w) for w in model["stem_widths"]),
      split=_split, latent_dim=tensors[f"{prefix}proj.kernel"].shape[1] if with_proj else None)


def _bottleneck(tensors, model: dict) -> Bottleneck:
  d = tensors["bottleneck.modality_embed"].shape[1]
  return Bottleneck(d_model=d, heads=int(model["num_heads"]),
                    depth=_count(tensors, "bottleneck.blocks"),
                    hidden=tensors["bottleneck.blocks.0.mlp.fc1.kernel"].shape[1],
                    latent_dim=tensors["bottleneck.proj.kernel"].shape[1])


def _torch_names(module: nn.Module, prefix: str, flax_prefix: str) -> dict[str, tuple[str, Any]]:
  """{torch state-dict name: (package tensor name, transform)} of one module's tensors."""
  out = {}

  def linear(t, f):
    out[f"{t}.weight"] = (f"{f}.kernel", lambda a: a.T)
    out[f"{t}.bias"] = (f"{f}.bias", None)

  def conv(t, f):
    out[f"{t}.weight"] = (f"{f}.kernel", lambda a: a.transpose(2, 1, 0))

  def bn(t, f):
    for ours, theirs in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                         ("running_var", "var")):
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
          out[f"{t}.branches.{j}.weight"] = (f"{f}.branch_kernels.{j}",
                                              lambda a: a.transpose(2, 1, 0))
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


def build_module(tensors: dict[str, np.ndarray], model: dict, modalities: tuple[str, ...]
                 ) -> nn.Module:
  """The torch module of a package's tensors ({Flax name: array}) and model config section,
  with every tensor loaded (strictly: a missing or unused tensor is an error)."""
  if "bottleneck.modality_embed" in tensors:          # M2AE
    if "path.pos" in tensors:                          # one modality's fingerprint encoder
      encoders = {modalities[0]: ("path.", _path_encoder(tensors, "path.", model, False))}
    else:
      encoders = {m: (f"{m}_encoder.", _path_encoder(tensors, f"{m}_encoder.", model, False))
                  for m in modalities}
    module = Fingerprint({m: e for m, (_, e) in encoders.items()}, _bottleneck(tensors, model))
    names = {}
    for m, (flax_prefix, enc) in encoders.items():
      names.update(_torch_names(enc, f"encoders.{m}.", flax_prefix))
    names.update(_torch_names(module.bottleneck, "bottleneck.", "bottleneck."))
  elif "pos" in tensors:                               # xMAE / baselines: a PathEncoder
    module = _path_encoder(tensors, "", model, True)
    names = _torch_names(module, "", "")
  else:
    raise TorchEncoderError("no encoder layout this module knows (expected tensors `pos`, "
                            "`path.pos` or `ppg_encoder.pos` with `bottleneck.*`)")
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
        f"{absent[:1]}), {len(unused)} unused (e.g. {unused[:1]}), {len(missing)} unmapped")
  new = {}
  for k, (f, transform) in names.items():
    a = np.asarray(tensors[f], np.float32)
    a = transform(a) if transform else a
    if tuple(a.shape) != tuple(state[k].shape):
      raise TorchEncoderError(f"tensor {f}: shape {a.shape} does not fit {k} "
                              f"{tuple(state[k].shape)}")
    new[k] = torch.from_numpy(np.ascontiguousarray(a))
  module.load_state_dict(new, strict=False)


# ---- the encoder -------------------------------------------------------------------------------

class TorchEncoder:
  """A package's encoder in PyTorch: `embed(x, fs)` / `embed(ppg=, ecg=, fs=)` -> (N, latent)
  float32 numpy, `embed_prepared(windows)` for contract-shaped normalized windows, `module` the
  `torch.nn.Module` (prepared (B, L) float32 tensors -> (B, latent))."""

  def __init__(self, module: nn.Module, info: dict, *, batch_size: int = 256,
               device: str | torch.device = "cpu"):
    self.module = module.to(device).eval()
    self.info = info
    self.device = torch.device(device)
    self.modality = str(info["modality"])
    self.modalities = package_lib.package_modalities(info)
    self.contract = dict(info["contract"])
    self.latent_dim = int(info["latent_dim"])
    self.batch_size = int(batch_size)
    self.last_alignment = "none"    # what the last `embed` did to the PPG (align_rows' note)

  @property
  def alignment(self) -> dict[str, Any]:
    """The PPG shift the package's training data were prepared with (`ppg_alignment`)."""
    return preprocess.ppg_alignment(self.info.get("preprocessing"))

  def __repr__(self):
    c = self.contract
    return (f"TorchEncoder({self.info['model_name']}/{self.modality}, latent {self.latent_dim}, "
            f"{c['segment_length']} samples at {c['sampling_rate']:g} Hz)")

  def __call__(self, *args, **kwargs):
    return self.module(*args, **kwargs)

  def _inputs(self, x, ppg, ecg) -> dict[str, Any]:
    given = {m: v for m, v in (("ppg", ppg), ("ecg", ecg)) if v is not None}
    if x is not None:
      if given:
        raise TorchEncoderError("pass the input either positionally or as ppg=/ecg=, not both")
      if len(self.modalities) > 1:
        raise TorchEncoderError(f"this {self.modality} encoder takes keyword inputs: "
                                "embed(ppg=..., ecg=...), either or both")
      given = {self.modalities[0]: x}
    if not given:
      raise TorchEncoderError("no input: pass " + " and/or ".join(f"{m}=..."
                                                                  for m in self.modalities))
    lacking = [m for m in given if m not in self.modalities]
    if lacking:
      raise TorchEncoderError(f"this package holds the {self.modality} encoder only: it cannot "
                              f"embed {lacking[0]}")
    return given

  def prepare(self, x: Any, fs: float | None = None, *, modality: str | None = None,
              clean: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(windows (M, segment_length) float32, source row of each window), as the JAX
    `Encoder.prepare` (see the module docstring)."""
    c = self.contract
    modality = modality or self.modalities[0]
    fs = c["sampling_rate"] if fs is None else fs
    a = _as_batch(x)
    length = int(c["segment_length"])
    if not len(a):
      return np.zeros((0, length), np.float32), np.zeros(0, np.int64)
    if self._as_prepared(a, fs, clean):
      return preprocess.minmax(a, axis=1).astype(np.float32), np.arange(len(a))
    try:
      return preprocess.prepare_for_inference(
          a, fs, config=self._preprocess_config(), modality=modality,
          clean_signal=True if clean is None else bool(clean), return_index=True)
    except preprocess.PreprocessError as e:
      raise TorchEncoderError(str(e)) from None

  def _as_prepared(self, a: np.ndarray, fs: float, clean: bool | None) -> bool:
    c = self.contract
    try:
      same_rate = math.isclose(float(fs), float(c["sampling_rate"]), rel_tol=1e-9)
    except (TypeError, ValueError):
      raise TorchEncoderError(f"unknown sampling rate {fs!r}") from None
    return a.shape[1] == int(c["segment_length"]) and same_rate and not clean

  def _preprocess_config(self, **alignment) -> preprocess.PreprocessConfig:
    c = self.contract
    return preprocess.PreprocessConfig(
        target_fs=int(round(c["sampling_rate"])), segment_seconds=float(c["segment_seconds"]),
        ecg_clean_method=c["ecg_clean_method"], ppg_clean_method=c["ppg_clean_method"],
        resample_method=c["resample_method"], **alignment)

  def prepare_aligned(self, given: dict[str, np.ndarray], fs: float | None = None, *,
                      clean: bool | None = None, align: bool = True):
    """`prepare` of every modality's rows, the PPG moved first as the JAX
    `Encoder.prepare_aligned` does -> ({modality: windows}, source row of each window, PPG shift
    of each window in seconds, what was applied in words)."""
    fs = self.contract["sampling_rate"] if fs is None else fs
    first = next(iter(given.values()))
    alignment = self.alignment if align else {}
    note = preprocess.alignment_note(alignment, tuple(given))
    if note == "none" or not len(first) or self._as_prepared(first, fs, clean):
      prepared = {m: self.prepare(a, fs, modality=m, clean=clean) for m, a in given.items()}
      rows = next(iter(prepared.values()))[1]
      return ({m: w for m, (w, _) in prepared.items()}, rows, np.zeros(len(rows)),
              "none" if note == "none" else "none (rows taken as prepared windows)")
    try:
      config = self._preprocess_config(**alignment)
      preprocess.check_row_length(first.shape, fs, config)
      recordings, shifts, note = preprocess.align_rows(given, fs, config)
    except preprocess.PreprocessError as e:
      raise TorchEncoderError(str(e)) from None
    windows: dict[str, list[np.ndarray]] = {m: [] for m in given}
    row_parts = []
    for i, recording in enumerate(recordings):
      for m, x in recording.items():
        w, _ = self.prepare(x[None], fs, modality=m, clean=clean)
        windows[m].append(w)
      row_parts.append(np.full(len(w), i))
    rows = np.concatenate(row_parts)
    return {m: np.concatenate(w) for m, w in windows.items()}, rows, shifts[rows], note

  @torch.no_grad()
  def embed_prepared(self, windows=None, *, ppg=None, ecg=None) -> np.ndarray:
    """Contract-shaped normalized windows (M, L) -> (M, latent) float32 numpy."""
    given = {m: np.asarray(w, np.float32) for m, w in self._inputs(windows, ppg, ecg).items()}
    length = int(self.contract["segment_length"])
    shapes = {w.shape for w in given.values()}
    if len(shapes) > 1 or any(w.ndim != 2 or w.shape[1] != length for w in given.values()):
      raise TorchEncoderError(f"wrong shape: prepared windows must be (M, {length}), the same "
                              f"for every modality; got {sorted(shapes)}")
    for m, w in given.items():
      bad = ~np.isfinite(w).all(axis=1)
      if bad.any():
        raise TorchEncoderError(f"prepared {m} windows have NaN or inf in {bad.sum()} of "
                                f"{len(w)} rows (first: row {np.argmax(bad)}); clean or drop "
                                "them before embedding")
    count = len(next(iter(given.values())))
    out = []
    for start in range(0, count, self.batch_size):
      chunk = {m: torch.from_numpy(w[start:start + self.batch_size]).to(self.device)
               for m, w in given.items()}
      z = (self.module(**chunk) if isinstance(self.module, Fingerprint)
           else self.module(next(iter(chunk.values()))))
      out.append(z.float().cpu().numpy())
    if not out:
      return np.zeros((0, self.latent_dim), np.float32)
    return np.concatenate(out)

  def embed(self, x: Any = None, fs: float | None = None, *, ppg: Any = None, ecg: Any = None,
            clean: bool | None = None, align: bool = True) -> np.ndarray:
    """Float (N, L) raw or prepared rows at `fs` Hz -> (N, latent) float32 numpy: one
    embedding per row (the mean over a long row's windows), as `load_encoder(...).embed`
    (which also takes 1-D recordings and returns per-window embeddings)."""
    given = {m: _as_batch(v) for m, v in self._inputs(x, ppg, ecg).items()}
    if len({a.shape for a in given.values()}) > 1:
      raise TorchEncoderError("ppg and ecg must be the same windows (same count and length)")
    windows, rows, _, self.last_alignment = self.prepare_aligned(given, fs, clean=clean,
                                                                 align=align)
    z = self.embed_prepared(**windows)
    n = next(iter(given.values())).shape[0]
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
      return z
    sums = np.zeros((n, z.shape[1]), np.float64)
    np.add.at(sums, rows, z)
    return (sums / np.bincount(rows, minlength=n)[:, None]).astype(np.float32)


def _as_batch(x: Any) -> np.ndarray:
  if isinstance(x, torch.Tensor):
    x = x.detach().cpu().numpy()
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    raise TorchEncoderError("wrong input: embed needs a real float array (N, L)") from None
  if a.ndim != 2 or a.shape[1] == 0:
    raise TorchEncoderError(f"wrong shape: embed needs a float array (N, L), got {a.shape}")
  if not np.isfinite(a).all():
    raise TorchEncoderError("input has NaN or inf: clean or drop those rows before embedding")
  return a


def load(path, *, batch_size: int = 256, device: str | torch.device = "cpu") -> TorchEncoder:
  """An exported package directory -> TorchEncoder (weights from `encoder.safetensors`); the
  package's files are checked against their recorded digests first, and names read from
  package.json must stay inside the package, as `load_encoder` checks them."""
  from safetensors.numpy import load_file
  path = Path(path)
  info = package_lib.read_package_info(path)
  package_lib.verify_files(path, info)
  weights = info.get("weights")
  file = package_lib.member(path, weights.get("safetensors") if isinstance(weights, dict)
                            else None, "weights file")
  config_file = package_lib.member(path, info.get("config_file"), "config file")
  try:
    tensors = load_file(str(file))
    model = json.loads(config_file.read_text())["model"]
  except (OSError, KeyError, ValueError) as e:
    raise TorchEncoderError(f"{path}: cannot read the package ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
  try:
    module = build_module(tensors, model, package_lib.package_modalities(info))
  except TorchEncoderError as e:
    raise TorchEncoderError(f"{path}: {e}") from None
  return TorchEncoder(module, info, batch_size=batch_size, device=device)
