"""What an exported encoder promises its user: the input contract (window length and rate,
normalization, cleaning), the preprocessing its training data had, and the per-window result of
`Encoder.embed`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xmae_jax import config_lib
from xmae_jax.data import shards


@dataclasses.dataclass(frozen=True)
class WindowEmbeddings:
  """`embed(..., per_window=True)`: one embedding per window of the input, in input order.

  embeddings: (M, latent) float32; start_s: (M,) each window's start in seconds from the start
  of its input row (0, 10, 20, ... for the 10-s contract: the windows are consecutive and do not
  overlap; a tail shorter than a window is not embedded); row: (M,) the input row it came from
  (all 0 for one 1-D recording); window_s: the windows' length in seconds; ppg_shift_s: (M,)
  seconds by which the PPG of the window's row was moved earlier (its windows start that much
  later in the PPG than start_s); alignment: what was applied, in words (`align_rows`).
  """

  embeddings: np.ndarray
  start_s: np.ndarray
  row: np.ndarray
  window_s: float
  ppg_shift_s: np.ndarray | None = None
  alignment: str = "none"

  def __len__(self) -> int:
    return len(self.embeddings)


_DATA = config_lib.data_config()  # a contract's defaults are the training data's


@dataclasses.dataclass(frozen=True)
class Contract:
  """What the encoder expects: segments of `segment_length` samples at `sampling_rate` Hz."""

  sampling_rate: float = float(_DATA.sampling_rate)
  segment_length: int = int(_DATA.segment_length)
  normalization: str = str(_DATA.normalize)  # per-segment min-max to [-1, 1]
  ecg_clean_method: str = "neurokit"
  ppg_clean_method: str = "elgendi"
  resample_method: str = "interpolation"

  @property
  def segment_seconds(self) -> float:
    return self.segment_length / self.sampling_rate

  @classmethod
  def from_config(cls, config) -> "Contract":
    data = config_lib.with_defaults(config).data
    # The model's input length is what the encoder takes (data.segment_length describes the
    # dataset and normally agrees).
    length = int(config.model.get("seq_len", data.segment_length))
    return cls(
        sampling_rate=float(data.sampling_rate),
        segment_length=length,
        normalization=str(data.normalize),
    )

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["segment_seconds"] = self.segment_seconds
    d["normalization_text"] = "per-segment min-max over time to [-1, 1]"
    return d


def dataset_preprocessing(config) -> dict[str, Any]:
  """The preprocessing parameters recorded in the manifest of the dataset `config` trained on
  (its `data.dir`; `PreprocessConfig.as_dict`), {} when that manifest is not readable."""
  data_dir = str(config_lib.with_defaults(config).data.dir or "")
  if not data_dir:
    return {}
  try:
    return shards.read_manifest(data_dir).get("preprocessing", {})
  except Exception:  # the dataset may be gone; the contract above is what loading needs
    return {}


__all__ = ["Contract", "WindowEmbeddings", "dataset_preprocessing"]
