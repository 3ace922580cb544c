"""Embed a recording with an exported encoder package from numpy: through `load_encoder`, or
through the package's StableHLO artifact (written by `xmae-export --stablehlo`).

  python examples/embed_with_numpy.py PACKAGE RECORD [--via load_encoder|stablehlo]
                                      [--channel PLETH] [--seconds 30] [--output z.npy]

RECORD is a WFDB record (path without .hea). The channel's first `--seconds` are cut into 10-s
rows at the record's own rate. `--via load_encoder` (default) is the whole JAX path:
`xmae_jax.load_encoder(PACKAGE).embed(rows, fs)` cleans, resamples, windows and normalizes.
`--via stablehlo` needs only `jax` to run the model: the rows are prepared with numpy/scipy
(xmae_jax.data.preprocess, which imports no JAX) as the contract in stablehlo.json says, and the
serialized function is deserialized with `jax.export.deserialize` and called on them; no Flax or
model code is imported. Both print and save one embedding per row (a package of one modality).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import wfdb


def rows(record, channel: str, seconds: float) -> np.ndarray:
  """(N, 10 s) rows of one channel, at the record's rate."""
  if channel not in record.sig_name:
    sys.exit(
        f"embed_with_numpy: error: {record.record_name} has no channel {channel!r} "
        f"(has {', '.join(record.sig_name)})"
    )
  x = record.p_signal[:, record.sig_name.index(channel)]
  per_row = int(round(10 * record.fs))
  n = int(min(seconds * record.fs, len(x)) // per_row)
  return x[: n * per_row].reshape(n, per_row)


def embed_with_load_encoder(package: str, x: np.ndarray, fs: float) -> np.ndarray:
  import xmae_jax

  return xmae_jax.load_encoder(package).embed(x, fs=fs)


def embed_with_stablehlo(package: str, x: np.ndarray, fs: float) -> np.ndarray:
  import jax

  from xmae_jax.data import preprocess

  contract = json.loads((Path(package) / "stablehlo.json").read_text())
  name, function = next(iter(contract["functions"].items()))  # the package's one modality
  c = contract["preprocessing"]
  config = preprocess.PreprocessConfig(
      target_fs=int(round(contract["sampling_rate"])),
      segment_seconds=contract["segment_seconds"],
      ecg_clean_method=c["ecg_clean_method"],
      ppg_clean_method=c["ppg_clean_method"],
      resample_method=c["resample_method"],
  )
  windows, row = preprocess.prepare_for_inference(
      x, fs, config=config, modality=name, clean_signal=True, return_index=True
  )
  exported = jax.export.deserialize(bytearray((Path(package) / function["file"]).read_bytes()))
  z = np.asarray(exported.call(windows))
  sums = np.zeros((len(x), z.shape[1]))  # one embedding per row: the mean of
  np.add.at(sums, row, z)  # that row's windows
  return (sums / np.bincount(row, minlength=len(x))[:, None]).astype(np.float32)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("package")
  p.add_argument("record")
  p.add_argument("--via", choices=("load_encoder", "stablehlo"), default="load_encoder")
  p.add_argument("--channel", default="PLETH")
  p.add_argument("--seconds", type=float, default=30.0)
  p.add_argument("--output", help="save the embeddings here (.npy)")
  args = p.parse_args()

  record = wfdb.rdrecord(args.record)
  x = rows(record, args.channel, args.seconds)
  embed = embed_with_stablehlo if args.via == "stablehlo" else embed_with_load_encoder
  z = embed(args.package, x, record.fs)
  if args.output:
    np.save(args.output, z)
  print(
      json.dumps(
          {
              "via": args.via,
              "rows": len(x),
              "embeddings": list(z.shape),
              "flax_imported": "flax" in sys.modules,
          }
      )
  )


if __name__ == "__main__":
  main()
