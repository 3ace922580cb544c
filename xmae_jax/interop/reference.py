"""The xMAE reference's PyTorch state dict <-> our XMAE parameters.

The reference (hzhou3/xMAE, `utils/model_arch/xmae.py`) names its parameters
`ppg_path.stem.enc1.0.branches.0.0.weight`, `ecg_path.encoder.blocks.0.attn.in_proj_weight`,
`bridger.ecg2ppg.0.ffn.1.weight`, `mask_token`, ... This module is the only place that knows those
names and torch's layouts; the model keeps its own (channels-last kernels, fused branch BatchNorm):

  torch                                   ours
  Conv1d weight (out, in, k)              kernel (k, in, out)
  Linear / MHA weights (out, in)          kernel (in, out)
  ConvTranspose1d weight (D, out, P)      kernel (D, P, out)
  PatchEmbed Conv1d weight (D, C, P)      kernel (P, C, D)
  3 Inception branch BatchNorms           one BatchNorm over the concatenated channels
  BatchNorm weight/bias/running_*         scale/bias/mean/var (num_batches_tracked is accepted
                                          and ignored: it only matters for momentum=None)

`from_reference_state_dict(state_dict_or_path, config)` builds the model for `config`, loads the
arrays and returns it in eval mode; `to_reference_state_dict(model)` is the inverse (numpy);
`import_checkpoint` writes the imported model as a workdir (what xmae-import-torch does).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax import config_lib
from xmae_jax.errors import XmaeError
from xmae_jax.models import layers
from xmae_jax.models import path as path_lib
from xmae_jax.models import stem
from xmae_jax.models.xmae import XMAE


class ReferenceStateDictError(XmaeError):
  """The state dict does not fit the model (lists every missing/unexpected/mis-shaped key)."""


@dataclasses.dataclass
class _Entry:
  """One of our Variables and the reference tensor(s) it corresponds to."""

  var: nnx.Variable
  names: tuple[str, ...]
  perm: tuple[int, ...] | None = None  # our axes -> torch axes (np.transpose order)
  split: tuple[int, ...] | None = None  # sizes along axis 0 when several tensors are fused

  def ref_shapes(self) -> list[tuple[int, ...]]:
    """The reference tensors' shapes (works on abstract models: no values are read)."""
    shape = tuple(self.var.shape)
    if self.perm is not None:
      shape = tuple(shape[i] for i in self.perm)
    if self.split is None:
      return [shape]
    return [(n,) + shape[1:] for n in self.split]

  def to_ref(self) -> list[np.ndarray]:
    a = np.asarray(self.var[...])
    if self.perm is not None:
      a = a.transpose(self.perm)
    if self.split is None:
      return [a]
    return np.split(a, np.cumsum(self.split)[:-1], axis=0)

  def to_ours(self, arrays: list[np.ndarray]) -> np.ndarray:
    a = arrays[0] if self.split is None else np.concatenate(arrays, axis=0)
    if self.perm is not None:
      a = a.transpose(np.argsort(self.perm))
    return a


_CONV = (2, 1, 0)  # (k, in, out) <-> (out, in, k)
_T = (1, 0)


def _bn(bn: layers.BatchNorm, prefixes: list[str], sizes=None) -> Iterator[_Entry]:
  split = tuple(sizes) if sizes is not None else None
  for var, suffix in (
      (bn.scale, "weight"),
      (bn.bias, "bias"),
      (bn.mean, "running_mean"),
      (bn.var, "running_var"),
  ):
    yield _Entry(var, tuple(f"{p}.{suffix}" for p in prefixes), split=split)


def _conv_bn_act(m: stem.ConvBNAct, p: str) -> Iterator[_Entry]:
  yield _Entry(m.conv.kernel, (f"{p}.0.weight",), _CONV)
  yield from _bn(m.bn, [f"{p}.1"])


def _inception(m: stem.InceptionBlock, p: str) -> Iterator[_Entry]:
  for b, kernel in enumerate(m.branch_kernels):
    yield _Entry(kernel, (f"{p}.branches.{b}.0.weight",), _CONV)
  yield from _bn(m.branch_bn, [f"{p}.branches.{b}.1" for b in range(len(m.widths))], m.widths)
  yield from _conv_bn_act(m.fuse, f"{p}.fuse")


def _stem(m: stem.UNetInceptionStem, p: str) -> Iterator[_Entry]:
  for stage in ("enc1", "enc2", "enc3"):
    for j, blk in enumerate(getattr(m, stage)):
      yield from _inception(blk, f"{p}.{stage}.{j}")
  for name in ("down1", "down2", "smooth2", "smooth1", "head"):
    yield from _conv_bn_act(getattr(m, name), f"{p}.{name}")
  for name in ("lat2", "lat1", "red3to2", "red2to1", "skip"):
    yield _Entry(getattr(m, name).kernel, (f"{p}.{name}.weight",), _CONV)
  yield from _bn(m.skip_bn, [f"{p}.skip_bn"])


def _ln(m: layers.LayerNorm, p: str) -> Iterator[_Entry]:
  yield _Entry(m.scale, (f"{p}.weight",))
  yield _Entry(m.bias, (f"{p}.bias",))


def _dense(m: layers.Dense, p: str) -> Iterator[_Entry]:
  yield _Entry(m.kernel, (f"{p}.weight",), _T)
  yield _Entry(m.bias, (f"{p}.bias",))


def _mha(m: path_lib.MultiheadAttention, p: str) -> Iterator[_Entry]:
  yield _Entry(m.in_kernel, (f"{p}.in_proj_weight",), _T)
  yield _Entry(m.in_bias, (f"{p}.in_proj_bias",))
  yield _Entry(m.out_kernel, (f"{p}.out_proj.weight",), _T)
  yield _Entry(m.out_bias, (f"{p}.out_proj.bias",))


def _block(m: path_lib.TransformerBlock, p: str, ln_names=("norm1", "norm2")) -> Iterator[_Entry]:
  yield from _ln(m.norm1, f"{p}.{ln_names[0]}")
  yield from _mha(m.attn, f"{p}.attn")
  yield from _ln(m.norm2, f"{p}.{ln_names[1]}")
  yield from _dense(m.mlp.fc1, f"{p}.mlp.0")
  yield from _dense(m.mlp.fc2, f"{p}.mlp.2")


def _cross(m: path_lib.CrossAttentionBlock, p: str) -> Iterator[_Entry]:
  yield from _ln(m.norm_q, f"{p}.nq")
  yield from _ln(m.norm_kv, f"{p}.nkv")
  yield from _mha(m.attn, f"{p}.attn")
  yield from _ln(m.ffn_norm, f"{p}.ffn.0")
  yield from _dense(m.ffn.fc1, f"{p}.ffn.1")
  yield from _dense(m.ffn.fc2, f"{p}.ffn.3")


def _path(m: path_lib.SinglePath, p: str) -> Iterator[_Entry]:
  enc = m.encoder
  yield from _stem(enc.stem, f"{p}.stem")
  yield _Entry(enc.patch.kernel, (f"{p}.patcher.proj.weight",), _CONV)
  yield _Entry(enc.patch.bias, (f"{p}.patcher.proj.bias",))
  yield _Entry(enc.pos, (f"{p}.pos",))
  for i, blk in enumerate(enc.blocks):
    yield from _block(blk, f"{p}.encoder.blocks.{i}")
  if enc.proj is not None:
    yield from _ln(enc.proj_norm, f"{p}.proj.0")
    yield from _dense(enc.proj, f"{p}.proj.1")
  if m.dec_block is not None:
    yield from _block(m.dec_block, f"{p}.dec_blk", ln_names=("ln1", "ln2"))
    yield _Entry(m.decoder.kernel, (f"{p}.decoder.deconv.weight",), (0, 2, 1))
    yield _Entry(m.decoder.bias, (f"{p}.decoder.deconv.bias",))
  if m.mask_loc_table is not None:
    yield _Entry(m.mask_loc_table, (f"{p}.mask_loc_table.weight",))


def layout(model: XMAE) -> list[_Entry]:
  """Every Variable of `model` with its reference name(s) and layout change."""
  entries = list(_path(model.ppg_path, "ppg_path")) + list(_path(model.ecg_path, "ecg_path"))
  for attr, name in (("bridge", "ecg2ppg"), ("bridge_unused", "ppg2ecg")):
    for i, blk in enumerate(getattr(model, attr) or ()):
      entries += _cross(blk, f"bridger.{name}.{i}")
  if model.mask_token is not None:
    entries.append(_Entry(model.mask_token, ("mask_token",)))
  return entries


def _bn_counters(entries: list[_Entry]) -> set[str]:
  return {
      n.rsplit(".", 1)[0] + ".num_batches_tracked"
      for e in entries
      for n in e.names
      if n.endswith(".running_mean")
  }


# ----------------------------------------------------------------------------------------------
def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def load_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
  """A name -> numpy mapping from a mapping (torch tensors or arrays) or a .pt/.pth file.

  Files are read with torch.load(weights_only=True); a Lightning checkpoint's `state_dict` and
  its `model.` prefix are unwrapped.
  """
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise ReferenceStateDictError(f"{path}: no such checkpoint file")
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ReferenceStateDictError(
          f"{path}: reading a PyTorch checkpoint needs torch (CPU build) installed"
      ) from e
    try:
      source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for bad files
      raise ReferenceStateDictError(f"{path}: not a readable PyTorch state dict ({e})") from e
  if (
      isinstance(source, Mapping)
      and "state_dict" in source
      and isinstance(source["state_dict"], Mapping)
  ):
    source = source["state_dict"]
  if not isinstance(source, Mapping):
    raise ReferenceStateDictError(f"expected a mapping of names to tensors, got {type(source)}")
  names = list(source)
  strip = bool(names) and all(n.startswith("model.") for n in names)
  return {(n[len("model.") :] if strip else n): _to_numpy(v) for n, v in source.items()}


def _unused_reference_names(config) -> set[str]:
  """Reference names of the modules built only with build_unused (ignored when it is off)."""
  full = config.copy_and_resolve_references()
  full.model.build_unused = True
  abstract = nnx.eval_shape(lambda: XMAE(full, rngs=nnx.Rngs(0)))
  entries = layout(abstract)
  return {n for e in entries for n in e.names} | _bn_counters(entries)


def _describe(kind: str, items: list[str], limit: int = 25) -> str:
  shown = ", ".join(items[:limit]) + (
      f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  )
  return f"{kind} ({len(items)}): {shown}"


def check_and_convert(
    model: XMAE, state: Mapping[str, np.ndarray], config
) -> list[tuple[_Entry, np.ndarray]]:
  """Pairs every Variable of `model` with its value from `state`; one error lists all problems."""
  entries = layout(model)
  expected = {n for e in entries for n in e.names}
  optional = _bn_counters(entries)
  ignorable = (
      _unused_reference_names(config) - expected - optional
      if not config.model.build_unused
      else set()
  )
  missing = sorted(expected - set(state))
  unexpected = sorted(set(state) - expected - optional - ignorable)
  misshaped, pairs = [], []
  for e in entries:
    if any(n not in state for n in e.names):
      continue
    want = e.ref_shapes()
    got = [tuple(state[n].shape) for n in e.names]
    bad = [f"{n} {g} (expected {w})" for n, g, w in zip(e.names, got, want) if g != tuple(w)]
    if bad:
      misshaped += bad
    else:
      pairs.append((e, e.to_ours([np.asarray(state[n], np.float32) for n in e.names])))
  if missing or unexpected or misshaped:
    parts = [
        _describe(k, v)
        for k, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if v
    ]
    raise ReferenceStateDictError(
        "reference state dict does not fit the model: " + "; ".join(parts)
    )
  return pairs


def from_reference_state_dict(state_dict_or_path, config) -> XMAE:
  """The XMAE for `config` holding the reference's weights and BatchNorm statistics, eval mode.

  Args:
    state_dict_or_path: the reference model's `state_dict()` (name -> torch tensor or array),
      or a path to a .pt/.pth file of one (a Lightning checkpoint is unwrapped).
    config: a full xMAE config whose model section matches the checkpoint's architecture.
  """
  if config.model.name != "xmae":
    raise ReferenceStateDictError(f"config model {config.model.name!r}: the reference is 'xmae'")
  state = load_state_dict(state_dict_or_path)
  model = XMAE(config, rngs=nnx.Rngs(0))
  for entry, value in check_and_convert(model, state, config):
    entry.var[...] = jnp.asarray(value, entry.var[...].dtype)
  model.eval()
  return model


def import_checkpoint(checkpoint, config, output) -> Path:
  """Converts `checkpoint` (a .pt/.pth path or a state-dict mapping) for `config` (a ConfigDict
  or a FILE[:ARG] spec) and writes it as step 0 of the workdir `output`, which
  `model_checkpoint.load_model`, xmae-export and xmae-train read. Returns the step directory."""
  # Orbax takes a while to import (it is in training.checkpoint); only loading needs it, not --help.
  from xmae_jax.training import model_checkpoint

  if isinstance(config, str):
    config = config_lib.load(config)
  model = from_reference_state_dict(checkpoint, config)
  return model_checkpoint.write_model_checkpoint(output, model, config)


def reference_shapes(model: XMAE) -> dict[str, tuple[int, ...]]:
  """Reference name -> shape of every tensor `model` corresponds to (abstract models work)."""
  entries = layout(model)
  out = {n: s for e in entries for n, s in zip(e.names, e.ref_shapes())}
  out.update({name: () for name in _bn_counters(entries)})
  return out


def to_reference_state_dict(model: XMAE) -> dict[str, np.ndarray]:
  """The reference-named state dict of `model` (numpy; num_batches_tracked set to 0)."""
  entries = layout(model)
  out = {}
  for e in entries:
    out.update(zip(e.names, e.to_ref()))
  for name in _bn_counters(entries):
    out[name] = np.array(0, np.int64)
  return out
