"""A frozen encoder and its input contract: `load_encoder(path).embed(x, fs=100)`.

An `Encoder` wraps one modality's encoder sub-module of a model (`model.encoder(modality)`, in
eval mode: no dropout, BatchNorm from running statistics) together with its preprocessing
contract (sampling rate, segment length, normalization). `embed` accepts float (N, L) segments:

* L == the contract's segment length and fs == its sampling rate: the rows are taken as prepared
  segments; they are min-max normalized per segment to [-1, 1] again (a no-op for prepared
  segments, and what the encoder saw in training for anything else).
* otherwise the rows are raw signals: cleaned with NeuroKit (as training data were; `clean=False`
  skips it), resampled to the contract's rate, cut into contract-length windows and normalized
  (xmae_jax.data.preprocess.prepare_for_inference); a row longer than one window gives several
  windows whose embeddings are averaged, so the result still has one row per input row.

The forward pass is one `jax.jit` over fixed-size batches (the last one padded, so it compiles
once), split over every local device along a 1-D mesh. Nothing here touches the network.

`load_encoder(path)` reads an exported package (format: xmae_jax.evaluation.package) or, for
convenience, a training workdir (its best checkpoint when one has a validation loss, else the
latest).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import package as package_lib


class EncoderError(XmaeError):
  """A model or package without the encoder asked for (no such modality)."""


class EncoderInputError(XmaeError):
  """Input that `embed` cannot use (wrong shape, NaN, too short, unknown sampling rate)."""


@dataclasses.dataclass(frozen=True)
class Contract:
  """What the encoder expects: segments of `segment_length` samples at `sampling_rate` Hz."""
  sampling_rate: float = 100.0
  segment_length: int = 1000
  normalization: str = "minmax"          # per-segment min-max to [-1, 1]
  ecg_clean_method: str = "neurokit"
  ppg_clean_method: str = "elgendi"
  resample_method: str = "interpolation"

  @property
  def segment_seconds(self) -> float:
    return self.segment_length / self.sampling_rate

  @classmethod
  def from_config(cls, config) -> "Contract":
    data = config.get("data", {}) if hasattr(config, "get") else {}
    fs = float(data.get("sampling_rate", 100))
    # The model's input length is what the encoder takes (data.segment_length describes the
    # dataset and normally agrees).
    length = int(config.model.get("seq_len", data.get("segment_length", 1000)))
    return cls(sampling_rate=fs, segment_length=length,
               normalization=str(data.get("normalize", "minmax")))

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["segment_seconds"] = self.segment_seconds
    d["normalization_text"] = "per-segment min-max over time to [-1, 1]"
    return d


class Encoder:
  """A frozen encoder: `embed(x, fs)` -> (N, latent) float32."""

  def __init__(self, module, config, modality: str, *, contract: Contract | None = None,
               batch_size: int = 256, info: dict | None = None):
    from flax import nnx
    module.eval()
    self.module = module
    self.config = config
    self.modality = modality
    self.contract = contract or Contract.from_config(config)
    self.info = dict(info or {})
    self.batch_size = int(batch_size)
    devices = jax.local_devices()
    self._mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._batch_sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
    graphdef, state = nnx.split(module)
    self._state = jax.device_put(state, replicated)

    @jax.jit
    def forward(state, x):
      return nnx.merge(graphdef, state)(x).astype(jnp.float32)

    self._forward = forward

  # ---- properties users read ---------------------------------------------------------------
  @property
  def latent_dim(self) -> int:
    return int(self.config.model.latent_dim)

  @property
  def param_count(self) -> int:
    return count_parameters(self.module)

  def __repr__(self):
    return (f"Encoder({self.config.model.name}/{self.modality}, latent {self.latent_dim}, "
            f"{self.param_count:,} parameters, {self.contract.segment_length} samples at "
            f"{self.contract.sampling_rate:g} Hz)")

  # ---- embedding ---------------------------------------------------------------------------
  def prepare(self, x: Any, fs: float | None = None, *, clean: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(windows (M, segment_length) float32, source row of each window)."""
    from xmae_jax.data import preprocess
    fs = self.contract.sampling_rate if fs is None else fs
    a = _as_batch(x)
    c = self.contract
    if not len(a):      # no rows: no windows (and (0, latent) from embed), at any length or rate
      return np.zeros((0, c.segment_length), np.float32), np.zeros(0, np.int64)
    if a.shape[1] == c.segment_length and _same_rate(fs, c.sampling_rate) and not clean:
      return preprocess.minmax(a, axis=1).astype(np.float32), np.arange(len(a))
    config = preprocess.PreprocessConfig(
        target_fs=int(round(c.sampling_rate)), segment_seconds=c.segment_seconds,
        ecg_clean_method=c.ecg_clean_method, ppg_clean_method=c.ppg_clean_method,
        resample_method=c.resample_method)
    try:
      return preprocess.prepare_for_inference(
          a, fs, config=config, modality=self.modality,
          clean_signal=True if clean is None else bool(clean), return_index=True)
    except preprocess.PreprocessError as e:
      raise EncoderInputError(str(e)) from None

  def embed_prepared(self, windows: np.ndarray) -> np.ndarray:
    """Contract-shaped, normalized windows (M, segment_length) -> (M, latent) float32."""
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 2 or windows.shape[1] != self.contract.segment_length:
      raise EncoderInputError(f"wrong shape: prepared windows must be (M, "
                              f"{self.contract.segment_length}), got {windows.shape}")
    n_dev = len(self._mesh.devices.flat)
    bs = max(n_dev, -(-min(self.batch_size, max(len(windows), 1)) // n_dev) * n_dev)
    out = []
    for start in range(0, len(windows), bs):
      chunk = windows[start:start + bs]
      pad = bs - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
      z = self._forward(self._state, jax.device_put(chunk, self._batch_sharding))
      out.append(np.asarray(z)[:bs - pad])
    if not out:
      return np.zeros((0, self.latent_dim), np.float32)
    return np.concatenate(out).astype(np.float32)

  def embed(self, x: Any, fs: float | None = None, *, clean: bool | None = None) -> np.ndarray:
    """Float (N, L) raw or prepared segments at `fs` Hz -> (N, latent) float32 embeddings.

    `fs` defaults to the contract's rate (100 Hz). `clean`: None = NeuroKit-clean raw input
    (when resampling or windowing is needed) and leave contract-shaped input as it is;
    True/False forces it either way.
    """
    windows, rows = self.prepare(x, fs, clean=clean)
    z = self.embed_prepared(windows)
    n = _as_batch(x).shape[0]
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
      return z
    sums = np.zeros((n, z.shape[1]), np.float64)
    np.add.at(sums, rows, z)
    return (sums / np.bincount(rows, minlength=n)[:, None]).astype(np.float32)

  __call__ = embed


def _same_rate(a: float, b: float) -> bool:
  try:
    return math.isclose(float(a), float(b), rel_tol=1e-9)
  except (TypeError, ValueError):
    raise EncoderInputError(f"unknown sampling rate {a!r}") from None


def _as_batch(x: Any) -> np.ndarray:
  if np.iscomplexobj(x):    # np.asarray(float) would keep the real part and only warn
    raise EncoderInputError("wrong input: embed needs a real float array (N, L), got complex "
                            "values")
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    raise EncoderInputError("wrong input: embed needs a float array (N, L)") from None
  if a.ndim != 2:
    raise EncoderInputError(f"wrong shape: embed needs a float array (N, L) of segments, got shape {a.shape}")
  if a.shape[1] == 0:
    raise EncoderInputError("wrong shape: segments of length 0")
  bad = ~np.isfinite(a)
  if bad.any():
    rows = np.unique(np.nonzero(bad)[0])
    raise EncoderInputError(f"input has NaN or inf in {len(rows)} of {len(a)} rows "
                            f"(first: row {rows[0]}); clean or drop them before embedding")
  return a


def count_parameters(module) -> int:
  from flax import nnx
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


# ---- building encoders ---------------------------------------------------------------------------

def encoder_module(model, modality: str):
  """The model's exported sub-module for `modality`, with a clear error if it has none."""
  try:
    return model.encoder(modality)
  except (ValueError, KeyError, NotImplementedError) as e:
    raise EncoderError(f"model {type(model).__name__} has no {modality} encoder ({e})") from None


def from_model(model, config, modality: str = "ppg", **kwargs) -> Encoder:
  """The frozen encoder of an in-memory model (shares its arrays)."""
  return Encoder(encoder_module(model, modality), config, modality, **kwargs)


def random_encoder(config, modality: str = "ppg", seed: int = 0, **kwargs) -> Encoder:
  """A randomly initialized encoder of `config` (the baseline pretrained encoders must beat)."""
  from flax import nnx
  from xmae_jax import models
  model = models.build(config, nnx.Rngs(seed))
  return from_model(model, config, modality, info={"source": f"random init (seed {seed})"}, **kwargs)


def from_workdir(workdir, step: str | int = "auto", modality: str = "ppg", **kwargs) -> Encoder:
  """'auto' = the best checkpoint by validation loss if any has one, else the latest; a corrupt
  one is skipped for the next intact one (`checkpoint.restore_model`)."""
  from xmae_jax.training import checkpoint
  model, config, used, _ = checkpoint.restore_model(workdir, step)
  return from_model(model, config, modality,
                    info={"source": f"workdir {workdir}", "step": used}, **kwargs)


def load_package(path, **kwargs) -> Encoder:
  """An exported package -> Encoder; weights from its Orbax checkpoint, no network."""
  from flax import nnx
  from xmae_jax.training import checkpoint
  path = Path(path).absolute()
  info = package_lib.read_package_info(path)
  config = package_lib.read_config(path, info)
  modality = info["modality"]
  graphdef, weights = nnx.split(abstract_encoder(config, modality))
  flat_target = checkpoint.flatten(weights)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = checkpoint.abstract_of(flat_target, {k: device for k in flat_target})
  restored = package_lib.restore_tensors(path, info, target)
  module = nnx.merge(graphdef, checkpoint.unflatten(weights, restored))
  contract = Contract(**{k: v for k, v in info["contract"].items()
                         if k in {f.name for f in dataclasses.fields(Contract)}})
  return Encoder(module, config, modality, contract=contract, info=info, **kwargs)


def abstract_encoder(config, modality: str):
  """The encoder sub-module of `config`'s model with abstract (shape-only) variables."""
  from flax import nnx
  from xmae_jax import models
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  return encoder_module(model, modality)


def load_encoder(path, *, step: str | int = "auto", modality: str | None = None,
                 batch_size: int = 256) -> Encoder:
  """An exported package (xmae-export) or a training workdir -> a frozen `Encoder`."""
  path = Path(path)
  if package_lib.is_package(path) or not (path / "checkpoints").is_dir():
    enc = load_package(path, batch_size=batch_size)
    if modality is not None and modality != enc.modality:
      raise EncoderError(f"package {path} holds the {enc.modality} encoder, not {modality}")
    return enc
  return from_workdir(path, step=step, modality=modality or "ppg", batch_size=batch_size)
