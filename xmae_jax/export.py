"""xmae-export: write a frozen encoder package from a training (or imported) workdir.

  xmae-export --workdir DIR --output OUT [--modality ppg|ecg] [--step auto|best|latest|N]

`--step auto` (default) takes the checkpoint with the lowest validation loss when one has it
(a training run), else the latest (e.g. a checkpoint written by xmae-import-torch).
The package layout is described in xmae_jax/evaluation/export.py; load it with
`xmae_jax.load_encoder(OUT)`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import export as export_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="xmae-export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a training or xmae-import-torch workdir")
  parser.add_argument("--output", required=True, help="the package directory to write")
  parser.add_argument("--modality", choices=("ppg", "ecg"), default="ppg")
  parser.add_argument("--step", default="auto", help="auto | best | latest | a step number")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing package")
  args = parser.parse_args(argv)
  try:
    out = export_lib.export_workdir(args.workdir, args.output, modality=args.modality,
                                    step=args.step, overwrite=args.overwrite)
  except (export_lib.ExportError, encoder_lib.EncoderError) as e:
    print(f"xmae-export: {e}", file=sys.stderr)
    return 1
  info = encoder_lib.read_package_info(out)
  print(json.dumps({"output": str(out), "model": info["model_name"], "modality": info["modality"],
                    "step": info["source"].get("step"), "param_count": info["param_count"],
                    "latent_dim": info["latent_dim"]}))
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
