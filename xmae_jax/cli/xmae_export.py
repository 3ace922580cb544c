"""xmae-export: write a frozen encoder package from a training (or imported) workdir.

  xmae-export --workdir DIR --output OUT [--modality ppg|ecg|ppg+ecg] [--step auto|best|latest|N]
              [--stablehlo] [--onnx]

`--modality ppg+ecg` (M2AE only) writes one package holding both modality encoders and the shared
bottleneck: `load_encoder(OUT).embed(ppg=..., ecg=..., fs=...)` takes either modality or both.

`--step auto` (default) takes the checkpoint with the lowest validation loss when one has it
(a training run), else the latest (e.g. a checkpoint written by xmae-import-torch).
`--overwrite` replaces a previous package only (recognized by its package.json); the output
must lie outside `--workdir` and be writable, which is checked before anything is read.
The package format is described in xmae_jax/evaluation/package.py; load it with
`xmae_jax.load_encoder(OUT)`, or without JAX as a PyTorch module with
`xmae_jax.interop.torch_encoder.load(OUT)` (every package). `--stablehlo` also writes the
embedding as serialized StableHLO with its input contract into the package (stablehlo.json,
stablehlo-*.bin: xmae_jax/interop/stablehlo.py), runnable with `jax.export.deserialize` alone;
`--onnx` (extra `onnx`: jax2onnx) writes it as ONNX (onnx-*.onnx: xmae_jax/interop/onnx_export.py).
"""

from __future__ import annotations

import json
import sys

from xmae_jax.cli import common
from xmae_jax.evaluation import export as export_lib
from xmae_jax.evaluation import package as package_lib
from xmae_jax.interop import onnx_export
from xmae_jax.interop import stablehlo

PROG = "xmae-export"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  p.add_argument("--workdir", required=True, help="a training or xmae-import-torch workdir")
  p.add_argument("--output", required=True, help="the package directory to write")
  p.add_argument(
      "--modality",
      choices=("ppg", "ecg", package_lib.JOINT),
      default="ppg",
      help=f"the encoder to export ({package_lib.JOINT}: M2AE's joint fingerprint)",
  )
  p.add_argument("--step", default="auto", help="auto | best | latest | a step number")
  p.add_argument(
      "--overwrite",
      action="store_true",
      help="replace an existing encoder package (only a package: anything else at "
      "--output is refused)",
  )
  p.add_argument(
      "--stablehlo",
      action="store_true",
      help="also write the embedding as serialized StableHLO (jax.export) with its "
      "input contract into the package",
  )
  p.add_argument(
      "--onnx",
      action="store_true",
      help="also write the embedding as ONNX into the package (needs jax2onnx)",
  )
  args = p.parse_args(argv)
  out = export_lib.export_workdir(
      args.workdir, args.output, modality=args.modality, step=args.step, overwrite=args.overwrite
  )
  info = package_lib.read_package_info(out)
  summary = {
      "output": str(out),
      "model": info["model_name"],
      "modality": info["modality"],
      "step": info["source"].get("step"),
      "param_count": info["param_count"],
      "latent_dim": info["latent_dim"],
  }
  if args.stablehlo:
    summary["stablehlo"] = str(stablehlo.write_artifact(out))
  if args.onnx:
    summary["onnx"] = [str(f) for f in onnx_export.write_onnx(out)]
  print(json.dumps(summary))


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
