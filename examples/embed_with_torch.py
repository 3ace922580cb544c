"""Embed a recording with an exported encoder package in PyTorch, without JAX.

  python examples/embed_with_torch.py PACKAGE RECORD [--channel PLETH] [--seconds 30]
                                      [--output z.npy]

PACKAGE is a directory written by `xmae-export`; RECORD a WFDB record (path without .hea),
e.g. a PhysioNet one. The channel's first `--seconds` are cut into 10-s rows at the record's own
rate; `embed` cleans, resamples and normalizes them as the package's contract says, and returns
one embedding per row. A joint ppg+ecg package (M2AE) takes `--channel` as PPG and `--ecg-channel`
as ECG.
"""

import argparse
import json
import sys

import numpy as np
import torch
import wfdb

from xmae_jax.interop import torch_encoder


def rows(record, channel: str, seconds: float) -> np.ndarray:
  """(N, 10 s) rows of one channel, at the record's rate."""
  if channel not in record.sig_name:
    sys.exit(
        f"embed_with_torch: error: {record.record_name} has no channel {channel!r} "
        f"(has {', '.join(record.sig_name)})"
    )
  x = record.p_signal[:, record.sig_name.index(channel)]
  per_row = int(round(10 * record.fs))
  n = int(min(seconds * record.fs, len(x)) // per_row)
  return x[: n * per_row].reshape(n, per_row)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("package")
  p.add_argument("record")
  p.add_argument("--channel", default="PLETH", help="the PPG (or a ppg/ecg package's) channel")
  p.add_argument("--ecg-channel", default="II", help="the ECG channel of a ppg+ecg package")
  p.add_argument("--seconds", type=float, default=30.0)
  p.add_argument("--output", help="save the embeddings here (.npy)")
  args = p.parse_args()

  enc = torch_encoder.load(args.package)
  record = wfdb.rdrecord(args.record)
  if len(enc.modalities) > 1:
    z = enc.embed(
        ppg=rows(record, args.channel, args.seconds),
        ecg=rows(record, args.ecg_channel, args.seconds),
        fs=record.fs,
    )
  else:
    z = enc.embed(rows(record, args.channel, args.seconds), fs=record.fs)

  # The module itself is a torch.nn.Module: prepared (B, L) windows in, (B, latent) out.
  windows, _ = enc.prepare(rows(record, args.channel, 10.0), record.fs, modality=enc.modalities[0])
  with torch.no_grad():
    x = torch.from_numpy(windows)
    direct = enc.module(ppg=x) if len(enc.modalities) > 1 else enc.module(x)
  if args.output:
    np.save(args.output, z)
  print(
      json.dumps(
          {
              "encoder": repr(enc),
              "embeddings": list(z.shape),
              "direct_module_output": list(direct.shape),
              "jax_modules": sorted(
                  m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax")
              ),
          }
      )
  )


if __name__ == "__main__":
  main()
