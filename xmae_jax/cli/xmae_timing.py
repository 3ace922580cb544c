"""xmae-timing: how well PTT and heart rate are read from each model's PPG embeddings.

  xmae-timing --data DIR --output-dir OUT \
      --encoder xmae=runs/xmae --random random=configs/xmae.py:demo --baseline random

Same encoder options as xmae-compare. Writes OUT/timing.md, OUT/timing.json, OUT/timing.png
(see xmae_jax/evaluation/ptt_hr_report.py for what is measured and the controls).
"""

from __future__ import annotations

import sys
from pathlib import Path

from xmae_jax.cli import common
from xmae_jax.evaluation import ptt_hr_report

PROG = "xmae-timing"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  common.add_encoder_arguments(p)
  p.add_argument(
      "--task",
      action="append",
      default=None,
      help=f"default: {', '.join(ptt_hr_report.TIMING_TASKS)}",
  )
  common.add_fold_arguments(p)
  p.add_argument("--no-controls", action="store_true", help="skip the shuffled-target control")
  args = p.parse_args(argv)
  ptt_hr_report.timing_report(
      common.encoder_specs(args),
      args.data,
      args.output_dir,
      baseline=args.baseline,
      splits=args.split,
      tasks=tuple(args.task or ptt_hr_report.TIMING_TASKS),
      linear_cfg=common.linear_config(args),
      reuse_embeddings=args.reuse_embeddings,
      controls=not args.no_controls,
  )
  print((Path(args.output_dir) / "timing.md").read_text())


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
