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
from safetensors.numpy import load_file
from torch import nn

from xmae_jax.data import preprocess
from xmae_jax.evaluation import package as package_lib
from xmae_jax.interop.torch_modules import Fingerprint
from xmae_jax.interop.torch_modules import TorchEncoderError
from xmae_jax.interop.torch_modules import build_module

# ---- the encoder -------------------------------------------------------------------------------


class TorchEncoder:
  """A package's encoder in PyTorch: `embed(x, fs)` / `embed(ppg=, ecg=, fs=)` -> (N, latent)
  float32 numpy, `embed_prepared(windows)` for contract-shaped normalized windows, `module` the
  `torch.nn.Module` (prepared (B, L) float32 tensors -> (B, latent))."""

  def __init__(
      self,
      module: nn.Module,
      info: dict,
      *,
      batch_size: int = 256,
      device: str | torch.device = "cpu",
  ):
    self.module = module.to(device).eval()
    self.info = info
    self.device = torch.device(device)
    self.modality = str(info["modality"])
    self.modalities = package_lib.package_modalities(info)
    self.contract = dict(info["contract"])
    self.latent_dim = int(info["latent_dim"])
    self.batch_size = int(batch_size)
    self.last_alignment = "none"  # what the last `embed` did to the PPG (align_rows' note)

  @property
  def alignment(self) -> dict[str, Any]:
    """The PPG shift the package's training data were prepared with (`ppg_alignment`)."""
    return preprocess.ppg_alignment(self.info.get("preprocessing"))

  def __repr__(self):
    c = self.contract
    return (
        f"TorchEncoder({self.info['model_name']}/{self.modality}, latent {self.latent_dim}, "
        f"{c['segment_length']} samples at {c['sampling_rate']:g} Hz)"
    )

  def __call__(self, *args, **kwargs):
    return self.module(*args, **kwargs)

  def _inputs(self, x, ppg, ecg) -> dict[str, Any]:
    given = {m: v for m, v in (("ppg", ppg), ("ecg", ecg)) if v is not None}
    if x is not None:
      if given:
        raise TorchEncoderError("pass the input either positionally or as ppg=/ecg=, not both")
      if len(self.modalities) > 1:
        raise TorchEncoderError(
            f"this {self.modality} encoder takes keyword inputs: "
            "embed(ppg=..., ecg=...), either or both"
        )
      given = {self.modalities[0]: x}
    if not given:
      raise TorchEncoderError(
          "no input: pass " + " and/or ".join(f"{m}=..." for m in self.modalities)
      )
    lacking = [m for m in given if m not in self.modalities]
    if lacking:
      raise TorchEncoderError(
          f"this package holds the {self.modality} encoder only: it cannot " f"embed {lacking[0]}"
      )
    return given

  def prepare(
      self,
      x: Any,
      fs: float | None = None,
      *,
      modality: str | None = None,
      clean: bool | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
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
          a,
          fs,
          config=self._preprocess_config(),
          modality=modality,
          clean_signal=True if clean is None else bool(clean),
          return_index=True,
      )
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
        target_fs=int(round(c["sampling_rate"])),
        segment_seconds=float(c["segment_seconds"]),
        ecg_clean_method=c["ecg_clean_method"],
        ppg_clean_method=c["ppg_clean_method"],
        resample_method=c["resample_method"],
        **alignment,
    )

  def prepare_aligned(
      self,
      given: dict[str, np.ndarray],
      fs: float | None = None,
      *,
      clean: bool | None = None,
      align: bool = True,
  ):
    """`prepare` of every modality's rows, the PPG moved first as the JAX
    `Encoder.prepare_aligned` does -> ({modality: windows}, source row of each window, PPG shift
    of each window in seconds, what was applied in words)."""
    fs = self.contract["sampling_rate"] if fs is None else fs
    try:
      return preprocess.prepare_aligned_rows(
          given,
          fs,
          self.alignment if align else {},
          prepare=lambda rows, m: self.prepare(rows, fs, clean=clean, modality=m),
          as_prepared=lambda rows: self._as_prepared(rows, fs, clean),
          config=self._preprocess_config,
      )
    except preprocess.PreprocessError as e:
      raise TorchEncoderError(str(e)) from None

  @torch.no_grad()
  def embed_prepared(self, windows=None, *, ppg=None, ecg=None) -> np.ndarray:
    """Contract-shaped normalized windows (M, L) -> (M, latent) float32 numpy."""
    given = {m: np.asarray(w, np.float32) for m, w in self._inputs(windows, ppg, ecg).items()}
    length = int(self.contract["segment_length"])
    shapes = {w.shape for w in given.values()}
    if len(shapes) > 1 or any(w.ndim != 2 or w.shape[1] != length for w in given.values()):
      raise TorchEncoderError(
          f"wrong shape: prepared windows must be (M, {length}), the same "
          f"for every modality; got {sorted(shapes)}"
      )
    for m, w in given.items():
      bad = ~np.isfinite(w).all(axis=1)
      if bad.any():
        raise TorchEncoderError(
            f"prepared {m} windows have NaN or inf in {bad.sum()} of "
            f"{len(w)} rows (first: row {np.argmax(bad)}); clean or drop "
            "them before embedding"
        )
    count = len(next(iter(given.values())))
    out = []
    for start in range(0, count, self.batch_size):
      chunk = {
          m: torch.from_numpy(w[start : start + self.batch_size]).to(self.device)
          for m, w in given.items()
      }
      z = (
          self.module(**chunk)
          if isinstance(self.module, Fingerprint)
          else self.module(next(iter(chunk.values())))
      )
      out.append(z.float().cpu().numpy())
    if not out:
      return np.zeros((0, self.latent_dim), np.float32)
    return np.concatenate(out)

  def embed(
      self,
      x: Any = None,
      fs: float | None = None,
      *,
      ppg: Any = None,
      ecg: Any = None,
      clean: bool | None = None,
      align: bool = True,
  ) -> np.ndarray:
    """Float (N, L) raw or prepared rows at `fs` Hz -> (N, latent) float32 numpy: one
    embedding per row (the mean over a long row's windows), as `load_encoder(...).embed`
    (which also takes 1-D recordings and returns per-window embeddings)."""
    given = {m: _as_batch(v) for m, v in self._inputs(x, ppg, ecg).items()}
    if len({a.shape for a in given.values()}) > 1:
      raise TorchEncoderError("ppg and ecg must be the same windows (same count and length)")
    windows, rows, _, self.last_alignment = self.prepare_aligned(
        given, fs, clean=clean, align=align
    )
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
  path = Path(path)
  info = package_lib.read_package_info(path)
  package_lib.verify_files(path, info)
  weights = info.get("weights")
  file = package_lib.member(
      path, weights.get("safetensors") if isinstance(weights, dict) else None, "weights file"
  )
  config_file = package_lib.member(path, info.get("config_file"), "config file")
  try:
    tensors = load_file(str(file))
    model = json.loads(config_file.read_text())["model"]
  except (OSError, KeyError, ValueError) as e:
    raise TorchEncoderError(
        f"{path}: cannot read the package ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''})"
    ) from None
  try:
    module = build_module(tensors, model, package_lib.package_modalities(info))
  except TorchEncoderError as e:
    raise TorchEncoderError(f"{path}: {e}") from None
  return TorchEncoder(module, info, batch_size=batch_size, device=device)
