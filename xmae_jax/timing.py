"""python -m xmae_jax.timing: how well PTT and heart rate are read from each model's PPG embeddings.

  python -m xmae_jax.timing --data DIR --output-dir OUT \
      --encoder xmae=runs/xmae --random random=configs/xmae.py:demo --baseline random

Same encoder options as xmae-compare. Writes OUT/timing.md, OUT/timing.json, OUT/timing.png
(see xmae_jax/evaluation/timing.py for what is measured and the controls).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from xmae_jax import compare as compare_cli
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import timing as timing_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xmae_jax.timing", description=__doc__.split("\n")[0])
  compare_cli.add_encoder_arguments(parser)
  parser.add_argument("--baseline", default=None, help="encoder NAME for paired differences")
  parser.add_argument("--task", action="append", default=None,
                      help=f"default: {', '.join(timing_lib.TIMING_TASKS)}")
  parser.add_argument("--folds", type=int, default=5)
  parser.add_argument("--bootstrap", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-controls", action="store_true", help="skip the shuffled-target control")
  args = parser.parse_args(argv)
  cfg = probe_lib.LinearProbeConfig(outer_folds=args.folds, n_bootstrap=args.bootstrap,
                                    seed=args.seed)
  try:
    specs = compare_cli.specs_from_args(args)
    if args.baseline and args.baseline not in [s.name for s in specs]:
      raise timing_lib.compare_lib.CompareError(f"baseline {args.baseline!r} is not an encoder name")
    timing_lib.timing_report(specs, args.data, args.output_dir, baseline=args.baseline,
                             splits=args.split, tasks=tuple(args.task or timing_lib.TIMING_TASKS),
                             linear_cfg=cfg, reuse_embeddings=args.reuse_embeddings,
                             controls=not args.no_controls)
  except compare_cli.ERRORS as e:
    print(f"xmae-timing: {e}", file=sys.stderr)
    return 1
  print((Path(args.output_dir) / "timing.md").read_text())
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
