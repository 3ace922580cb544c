"""A prepared dataset directory as a TensorFlow Datasets builder (ArrayRecord, no TensorFlow).

    from xmae_jax.data import tfds as xtfds
    xtfds.prepare("data/demo", "tfds_data")                  # writes TFDS ArrayRecord files
    src = xtfds.data_source("tfds_data", split="train")      # = tfds.data_source(NAME, ...)
    src[0]["ppg"]                                            # float16 (1000,), as our record

`tensorflow_datasets` is an optional extra (`pip install .[tfds]`); it is imported only when
these functions run. The builder copies every record of every split in index order
(`disable_shuffling`), so TFDS example i of a split is record i of our split. Waveforms keep
their stored float16 values; a modality a record lacks is zeros with `has_<modality>` False.
Metadata and labels, whose keys vary between sources, travel as JSON text.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

from xmae_jax.data import dataset_reader
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

NAME = "xmae_ecg_ppg"  # the TFDS dataset name (tfds.data_source(NAME, data_dir=...))


class TfdsUnavailableError(ImportError):
  """tensorflow_datasets is not installed (it is the optional `tfds` extra)."""


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise TfdsUnavailableError(
        f"tensorflow_datasets is not installed ({e}); install the extra: pip install .[tfds]"
    ) from None
  return tfds


@functools.cache
def builder_class():
  """The `tfds.core.GeneratorBasedBuilder` subclass (created once, on first use)."""
  tfds = _tfds()
  import numpy as np  # pylint: disable=g-import-not-at-top

  class XmaeEcgPpg(tfds.core.GeneratorBasedBuilder):
    """xmae-jax segments: 10 s of synchronized PPG and ECG at 100 Hz, per record."""

    name = NAME
    VERSION = tfds.core.Version(f"{record_lib.SCHEMA_VERSION}.0.0")
    RELEASE_NOTES = {
        f"{record_lib.SCHEMA_VERSION}.0.0": "xmae-jax record schema " f"{record_lib.SCHEMA_VERSION}"
    }

    # TFDS derives this from the package resources, which needs `importlib_resources` (not a
    # dependency of tensorflow-datasets 4.9.10 on Python 3.11); this module is the code path.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # pylint: disable=no-self-argument
      from etils import epath  # pylint: disable=g-import-not-at-top

      return epath.Path(__file__)

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
      self._source_dir = source_dir
      if source_dir is not None:
        self._manifest = shards.read_manifest(source_dir)
        length = int(self._manifest["segment_length"])
      else:  # reading an already prepared TFDS directory: the shape comes from features.json
        self._manifest, length = None, 1000
      self._length = length
      super().__init__(**kwargs)

    def _info(self):
      length = self._length
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          disable_shuffling=True,
          features=tfds.features.FeaturesDict(
              {
                  "ppg": tfds.features.Tensor(shape=(length,), dtype=np.float16),
                  "ecg": tfds.features.Tensor(shape=(length,), dtype=np.float16),
                  "has_ppg": np.bool_,
                  "has_ecg": np.bool_,
                  "quality_ppg": np.float32,
                  "quality_ecg": np.float32,
                  "subject_id": tfds.features.Text(),
                  "segment_id": tfds.features.Text(),
                  "source": tfds.features.Text(),
                  "meta": tfds.features.Text(),
                  "labels": tfds.features.Text(),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      if self._manifest is None:
        raise shards.DatasetError(
            "preparing the TFDS dataset needs source_dir (an xmae-prepare " "output)"
        )
      return {
          split: self._generate_examples(split)
          for split, entry in self._manifest["splits"].items()
          if entry.get("records", 0)
      }

    def _generate_examples(self, split):
      zeros = np.zeros(self._length, np.float16)
      for n, (_, rec) in enumerate(dataset_reader.iter_records(str(self._source_dir), split)):
        yield n, {
            "ppg": zeros if rec.ppg is None else rec.ppg.astype(np.float16),
            "ecg": zeros if rec.ecg is None else rec.ecg.astype(np.float16),
            "has_ppg": rec.ppg is not None,
            "has_ecg": rec.ecg is not None,
            "quality_ppg": _float(rec.quality_ppg),
            "quality_ecg": _float(rec.quality_ecg),
            "subject_id": rec.subject_id,
            "segment_id": rec.segment_id,
            "source": rec.source,
            "meta": json.dumps(rec.meta, sort_keys=True),
            "labels": json.dumps(rec.labels, sort_keys=True),
        }

  return XmaeEcgPpg


def _float(x: Any) -> float:
  return math.nan if x is None else float(x)


def prepare(source_dir: str | os.PathLike, tfds_dir: str | os.PathLike):
  """Writes the TFDS version of a dataset directory under `tfds_dir`; returns the builder."""
  shards.read_manifest(source_dir)  # a clear error before TFDS starts
  builder = builder_class()(
      source_dir=source_dir, data_dir=str(tfds_dir), file_format="array_record"
  )
  builder.download_and_prepare()
  return builder


def data_source(tfds_dir: str | os.PathLike, split: str = "train"):
  """`tfds.data_source` over a directory written by `prepare` (random access, no TF)."""
  tfds = _tfds()
  builder_class()  # registers the builder under NAME
  if not Path(tfds_dir).is_dir():
    raise shards.DatasetError(f"TFDS directory {tfds_dir} does not exist")
  return tfds.data_source(NAME, data_dir=str(tfds_dir), split=split, download=False)
