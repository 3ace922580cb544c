"""A frozen encoder and its input contract: `load_encoder(path).embed(x, fs=100)`.

An `Encoder` wraps one modality's encoder sub-module of a model (`model.encoder(modality)`, in
eval mode: no dropout, BatchNorm from running statistics) together with its preprocessing
contract (sampling rate, segment length, normalization). For M2AE it can instead wrap the joint
fingerprint (`encoder_module.JointFingerprint`, modality "ppg+ecg": both modality encoders and
the shared bottleneck), whose `embed(ppg=..., ecg=..., fs=...)` takes either modality or both
and returns fingerprints of one shape in one latent space. `.modalities` says what an encoder
takes; a single-modality encoder takes `embed(x, fs)` or the keyword of its modality. `embed`
accepts float (N, L) segments (per modality; both modalities must be the same windows):

* L == the contract's segment length and fs == its sampling rate: the rows are taken as prepared
  segments; they are min-max normalized per segment to [-1, 1] again (a no-op for prepared
  segments, and what the encoder saw in training for anything else).
* otherwise the rows are raw signals: cleaned with NeuroKit (as training data were; `clean=False`
  skips it), resampled to the contract's rate, cut into contract-length windows and normalized
  (xmae_jax.data.preprocess.prepare_for_inference); a row longer than one window gives several
  windows whose embeddings are averaged, so the result still has one row per input row, unless
  `per_window=True`: then every window's embedding comes back with its start time
  (`WindowEmbeddings`). A 1-D input is one recording, embedded per window by default.

Raw rows are recordings: when the package records a PPG shift of its training data
(`--ppg-align-seconds` / `--ppg-delay-seconds` of xmae-prepare), each row's PPG is moved as
xmae-prepare moved a recording's (xmae_jax.data.preprocess.align_rows: measured on the row's ECG
when `ecg=` is given, else the fixed delay), so raw arrays embed as the same record read from
WFDB files; `WindowEmbeddings.alignment` / `Encoder.last_alignment` say what was applied.
Contract-shaped rows are taken as prepared windows and are not moved.

The forward pass is one `jax.jit` over fixed-size batches (the last one padded, so it compiles
once), split over every local device along a 1-D mesh. Nothing here touches the network.

`load_encoder(path)` reads an exported package (format: xmae_jax.evaluation.package) or, for
convenience, a training workdir (its best checkpoint when one has a validation loss, else the
latest).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax import models
from xmae_jax import paths
from xmae_jax.data import preprocess
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib
from xmae_jax.evaluation.contract import Contract
from xmae_jax.evaluation.contract import WindowEmbeddings


class EncoderInputError(XmaeError):
  """Input that `embed` cannot use (wrong shape, NaN, too short, unknown sampling rate)."""


class Encoder:
  """A frozen encoder: `embed(x, fs)` (one modality) or `embed(ppg=, ecg=, fs=)` -> (N, latent)
  float32. `modality`: "ppg", "ecg" or "ppg+ecg" (a `JointFingerprint` module, which may also be
  restricted to one of its modalities)."""

  def __init__(
      self,
      module,
      config,
      modality: str,
      *,
      contract: Contract | None = None,
      batch_size: int = 256,
      info: dict | None = None,
  ):
    module.eval()
    self.module = module
    self.config = config
    self.modality = modality
    self.modalities = package_lib.modalities_of(modality)
    self.contract = contract or Contract.from_config(config)
    self.info = dict(info or {})
    self.batch_size = int(batch_size)
    self.last_alignment = "none"  # what the last `embed` did to the PPG (align_rows' note)
    devices = jax.local_devices()
    self._mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._batch_sharding = jax.sharding.NamedSharding(
        self._mesh, jax.sharding.PartitionSpec("data")
    )
    replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
    graphdef, state = nnx.split(module)
    self._state = jax.device_put(state, replicated)
    joint = isinstance(module, encoder_module.JointFingerprint)

    @jax.jit
    def forward(state, inputs):  # inputs: {modality: (B, L)}; one trace per set of modalities
      m = nnx.merge(graphdef, state)
      z = m(**inputs) if joint else m(inputs[modality])
      return z.astype(jnp.float32)

    self._forward = forward

  # ---- properties users read ---------------------------------------------------------------
  @property
  def latent_dim(self) -> int:
    return int(self.config.model.latent_dim)

  @property
  def alignment(self) -> dict[str, Any]:
    """The PPG shift the package's training data were prepared with (`ppg_alignment`)."""
    return preprocess.ppg_alignment(self.info.get("preprocessing"))

  @property
  def param_count(self) -> int:
    return encoder_module.count_parameters(self.module)

  def __repr__(self):
    return (
        f"Encoder({self.config.model.name}/{self.modality}, latent {self.latent_dim}, "
        f"{self.param_count:,} parameters, {self.contract.segment_length} samples at "
        f"{self.contract.sampling_rate:g} Hz)"
    )

  # ---- inputs ------------------------------------------------------------------------------
  def check_modalities(self, modalities) -> tuple[str, ...]:
    """`modalities` if this encoder takes them (one line if none is given or one is lacking)."""
    modalities = tuple(modalities)
    if not modalities:
      raise EncoderInputError(
          f"no input: pass {' and/or '.join(f'{m}=...' for m in self.modalities)}"
      )
    lacking = [m for m in modalities if m not in self.modalities]
    if lacking:
      raise encoder_module.EncoderError(
          f"{self._name()} holds the {self.modality} encoder only: it cannot " f"embed {lacking[0]}"
      )
    return modalities

  def inputs(self, x: Any = None, *, ppg: Any = None, ecg: Any = None) -> dict[str, Any]:
    """{modality: array} of an `embed` call: `x` is this encoder's one modality; `ppg=`/`ecg=`
    name theirs. Refuses no input, a modality this encoder lacks, and x for a joint encoder."""
    given = {m: v for m, v in (("ppg", ppg), ("ecg", ecg)) if v is not None}
    if x is not None:
      if given:
        raise EncoderInputError("pass the input either positionally or as ppg=/ecg=, not both")
      if len(self.modalities) > 1:
        raise EncoderInputError(
            f"this {self.modality} encoder takes keyword inputs: "
            "embed(ppg=..., ecg=...), either or both"
        )
      given = {self.modality: x}
    self.check_modalities(given)
    return given

  def _name(self) -> str:
    src = self.info.get("source")
    where = (
        f"package {self.info['path']}"
        if self.info.get("path")
        else src
        if isinstance(src, str)
        else f"model {self.config.model.name}"
    )
    return str(where)

  @staticmethod
  def _check_same_windows(arrays: dict[str, np.ndarray]) -> None:
    shapes = {m: np.shape(a) for m, a in arrays.items()}
    if len(set(shapes.values())) > 1:
      raise EncoderInputError(
          "ppg and ecg must be the same windows (same count and length), got "
          + ", ".join(f"{m} {tuple(s)}" for m, s in shapes.items())
      )

  # ---- embedding ---------------------------------------------------------------------------
  def prepare(
      self,
      x: Any,
      fs: float | None = None,
      *,
      clean: bool | None = None,
      modality: str | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """(windows (M, segment_length) float32, source row of each window) of one modality's input
    (`modality`: default this encoder's one modality)."""
    modality = modality or self.modalities[0]
    fs = self.contract.sampling_rate if fs is None else fs
    a = _as_batch(x)
    c = self.contract
    if not len(a):  # no rows: no windows (and (0, latent) from embed), at any length or rate
      return np.zeros((0, c.segment_length), np.float32), np.zeros(0, np.int64)
    if self._as_prepared(a, fs, clean):
      return preprocess.minmax(a, axis=1).astype(np.float32), np.arange(len(a))
    config = self._preprocess_config()
    try:
      return preprocess.prepare_for_inference(
          a,
          fs,
          config=config,
          modality=modality,
          clean_signal=True if clean is None else bool(clean),
          return_index=True,
      )
    except preprocess.PreprocessError as e:
      raise EncoderInputError(str(e)) from None

  def _as_prepared(self, a: np.ndarray, fs: float, clean: bool | None) -> bool:
    """Whether rows `a` at `fs` are taken as prepared windows (see the module docstring)."""
    c = self.contract
    return a.shape[1] == c.segment_length and _same_rate(fs, c.sampling_rate) and not clean

  def _preprocess_config(self, **alignment):
    c = self.contract
    return preprocess.PreprocessConfig(
        target_fs=int(round(c.sampling_rate)),
        segment_seconds=c.segment_seconds,
        ecg_clean_method=c.ecg_clean_method,
        ppg_clean_method=c.ppg_clean_method,
        resample_method=c.resample_method,
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
    """`prepare` of every given modality's (N, L) rows, the PPG moved first as the package's
    training data's was (`align_rows`; not for rows taken as prepared windows, nor with
    align=False) -> ({modality: windows}, source row of each window, PPG shift of each window
    in seconds, what was applied in words)."""
    fs = self.contract.sampling_rate if fs is None else fs
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
      raise EncoderInputError(str(e)) from None

  def embed_prepared(
      self,
      windows: np.ndarray | None = None,
      *,
      ppg: np.ndarray | None = None,
      ecg: np.ndarray | None = None,
  ) -> np.ndarray:
    """Contract-shaped, normalized windows (M, segment_length) -> (M, latent) float32: `windows`
    of this encoder's one modality, or `ppg=`/`ecg=` (either or both, the same windows)."""
    given = {
        m: np.asarray(w, np.float32) for m, w in self.inputs(windows, ppg=ppg, ecg=ecg).items()
    }
    for m, w in given.items():
      if w.ndim != 2 or w.shape[1] != self.contract.segment_length:
        raise EncoderInputError(
            f"wrong shape: prepared {m} windows must be (M, "
            f"{self.contract.segment_length}), got {w.shape}"
        )
      _check_finite(w, f"prepared {m} windows")
    self._check_same_windows(given)
    count = len(next(iter(given.values())))
    n_dev = len(self._mesh.devices.flat)
    bs = max(n_dev, -(-min(self.batch_size, max(count, 1)) // n_dev) * n_dev)
    out = []
    for start in range(0, count, bs):
      chunk = {m: w[start : start + bs] for m, w in given.items()}
      pad = bs - len(next(iter(chunk.values())))
      if pad:
        chunk = {
            m: np.concatenate([c, np.zeros((pad, c.shape[1]), np.float32)])
            for m, c in chunk.items()
        }
      z = self._forward(self._state, jax.device_put(chunk, self._batch_sharding))
      out.append(np.asarray(z)[: bs - pad])
    if not out:
      return np.zeros((0, self.latent_dim), np.float32)
    return np.concatenate(out).astype(np.float32)

  def embed(
      self,
      x: Any = None,
      fs: float | None = None,
      *,
      ppg: Any = None,
      ecg: Any = None,
      clean: bool | None = None,
      per_window: bool | None = None,
      align: bool = True,
  ) -> np.ndarray | WindowEmbeddings:
    """Float (N, L) raw or prepared segments at `fs` Hz -> (N, latent) float32 embeddings; one
    recording (L,) -> its windows' embeddings with their start times (`WindowEmbeddings`).

    `x` is this encoder's one modality; `ppg=` / `ecg=` name the modality (a ppg+ecg encoder
    takes either or both, the same (N, L) windows of each, and returns one (N, latent)
    fingerprint per row whatever is given). `fs` defaults to the contract's rate (100 Hz).
    `clean`: None = NeuroKit-clean raw input (when resampling or windowing is needed) and leave
    contract-shaped input as it is; True/False forces it either way.
    `per_window`: True returns a `WindowEmbeddings` (every contract-length window of every row,
    with its row and start time in seconds); False one row per input row, a row longer than one
    window getting the mean of its windows' embeddings. None (default): True for a 1-D input
    (one recording, e.g. a night of PPG: `r = enc.embed(ppg, fs=125); r.embeddings, r.start_s`),
    False for (N, L).
    `align`: move raw rows' PPG as the package's training data's was (module docstring); what
    was applied is in `last_alignment` (and a `WindowEmbeddings`' `alignment`). False embeds
    the rows as given.
    """
    given = self.inputs(x, ppg=ppg, ecg=ecg)
    one_recording = all(np.ndim(v) == 1 for v in given.values())
    if one_recording:
      given = {m: np.asarray(v)[None] for m, v in given.items()}
    per_window = one_recording if per_window is None else bool(per_window)
    given = {m: _as_batch(v) for m, v in given.items()}
    self._check_same_windows(given)
    windows, rows, shifts, self.last_alignment = self.prepare_aligned(
        given, fs, clean=clean, align=align
    )
    z = self.embed_prepared(**windows)
    if per_window:
      return WindowEmbeddings(
          embeddings=z,
          start_s=self.window_starts(rows),
          row=np.asarray(rows, np.int64),
          window_s=self.contract.segment_seconds,
          ppg_shift_s=shifts,
          alignment=self.last_alignment,
      )
    n = next(iter(given.values())).shape[0]
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
      return z
    sums = np.zeros((n, z.shape[1]), np.float64)
    np.add.at(sums, rows, z)
    return (sums / np.bincount(rows, minlength=n)[:, None]).astype(np.float32)

  __call__ = embed

  def window_starts(self, rows: np.ndarray) -> np.ndarray:
    """Start (s) of each window `prepare` made, from its row index: the windows of a row are
    consecutive and one contract length apart (prepare's windowing has no overlap)."""
    rows = np.asarray(rows)
    if not len(rows):
      return np.zeros(0)
    first = np.r_[True, rows[1:] != rows[:-1]]
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    return (np.arange(len(rows)) - run_start) * self.contract.segment_seconds


def _same_rate(a: float, b: float) -> bool:
  try:
    return math.isclose(float(a), float(b), rel_tol=1e-9)
  except (TypeError, ValueError):
    raise EncoderInputError(f"unknown sampling rate {a!r}") from None


def _as_batch(x: Any) -> np.ndarray:
  if np.iscomplexobj(x):  # np.asarray(float) would keep the real part and only warn
    raise EncoderInputError(
        "wrong input: embed needs a real float array (N, L), got complex " "values"
    )
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    raise EncoderInputError("wrong input: embed needs a float array (N, L)") from None
  if a.ndim != 2:
    raise EncoderInputError(
        "wrong shape: embed needs a float array (N, L) of segments, " f"got shape {a.shape}"
    )
  if a.shape[1] == 0:
    raise EncoderInputError("wrong shape: segments of length 0")
  _check_finite(a, "input")
  return a


def _check_finite(a: np.ndarray, what: str) -> None:
  bad = ~np.isfinite(a)
  if bad.any():
    rows = np.unique(np.nonzero(bad)[0])
    raise EncoderInputError(
        f"{what} has NaN or inf in {len(rows)} of {len(a)} rows "
        f"(first: row {rows[0]}); clean or drop them before embedding"
    )


# ---- building encoders ---------------------------------------------------------------------------


def from_model(model, config, modality: str = "ppg", **kwargs) -> Encoder:
  """The frozen encoder of an in-memory model (shares its arrays)."""
  return Encoder(encoder_module.encoder_module(model, modality), config, modality, **kwargs)


def random_encoder(config, modality: str = "ppg", seed: int = 0, **kwargs) -> Encoder:
  """A randomly initialized encoder of `config` (the baseline pretrained encoders must beat)."""
  model = models.build(config, nnx.Rngs(seed))
  return from_model(
      model, config, modality, info={"source": f"random init (seed {seed})"}, **kwargs
  )


def from_workdir(workdir, step: str | int = "auto", modality: str = "ppg", **kwargs) -> Encoder:
  """'auto' = the best checkpoint by validation loss if any has one, else the latest; a corrupt
  one is skipped for the next intact one (`model_checkpoint.restore_model`)."""
  # Orbax takes a while to import (it is in training.checkpoint); only loading needs it, not --help.
  from xmae_jax.training import model_checkpoint

  model, config, used, _ = model_checkpoint.restore_model(workdir, step)
  return from_model(
      model, config, modality, info={"source": f"workdir {workdir}", "step": used}, **kwargs
  )


def load_package(path, **kwargs) -> Encoder:
  """An exported package -> Encoder; weights from its Orbax checkpoint, no network (a gs://
  package is copied to a local folder first: its files are read and verified one by one)."""
  # Orbax takes a while to import (it is in training.checkpoint); only loading needs it, not --help.
  from xmae_jax.training import checkpoint

  path = paths.local_mirror(path, "encoder package").absolute()
  info = package_lib.read_package_info(path)
  package_lib.verify_files(path, info)
  config = package_lib.read_config(path, info)
  modality = "+".join(package_lib.package_modalities(info))
  graphdef, weights = nnx.split(encoder_module.abstract_encoder(config, modality))
  flat_target = checkpoint.flatten(weights)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = checkpoint.abstract_of(flat_target, {k: device for k in flat_target})
  restored = package_lib.restore_tensors(path, info, target)
  module = nnx.merge(graphdef, checkpoint.unflatten(weights, restored))
  contract = Contract(
      **{
          k: v
          for k, v in info["contract"].items()
          if k in {f.name for f in dataclasses.fields(Contract)}
      }
  )
  return Encoder(
      module, config, modality, contract=contract, info={**info, "path": str(path)}, **kwargs
  )


def load_encoder(
    path, *, step: str | int = "auto", modality: str | None = None, batch_size: int = 256
) -> Encoder:
  """An exported package (xmae-export) or a training workdir -> a frozen `Encoder`.

  `modality` (ppg, ecg or ppg+ecg): for a workdir, which encoder (default ppg); for a package,
  what it must hold: a ppg+ecg package asked for one modality gives the encoder of that
  modality alone (its fingerprint from that modality; `embed(x)` then means that modality).
  """
  path = paths.path(path)
  if package_lib.is_package(path) or not (path / "checkpoints").is_dir():
    enc = load_package(path, batch_size=batch_size)
    if modality is None or modality == enc.modality:
      return enc
    lacking = [m for m in package_lib.modalities_of(modality) if m not in enc.modalities]
    if lacking:
      raise encoder_module.EncoderError(
          f"package {path} holds the {enc.modality} encoder, not {modality}"
      )
    return Encoder(
        enc.module,
        enc.config,
        modality,
        contract=enc.contract,
        info=enc.info,
        batch_size=batch_size,
    )
  return from_workdir(path, step=step, modality=modality or "ppg", batch_size=batch_size)
