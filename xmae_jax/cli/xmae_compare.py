"""xmae-compare: several frozen encoders on the same data, tasks and folds -> table + bar chart.

  xmae-compare --data DIR --output-dir OUT \
      --encoder xmae=runs/xmae --encoder ppg_mae=exports/ppg_mae \
      --random random=configs/xmae.py:demo [--task hr --task ptt | --task all]
      [--split test] [--protocol linear|xmae|both] [--baseline random]

--encoder NAME=PATH: an exported package or a training workdir (repeatable).
--random NAME=CONFIG_FILE[:ARG]: that config's model, randomly initialized (--random-seed).
Writes OUT/table.md, OUT/results.json, OUT/comparison.png and OUT/embeddings/NAME.npz.
"""
from __future__ import annotations

import sys
from pathlib import Path

from xmae_jax.cli import common
from xmae_jax.evaluation import compare as compare_lib

PROG = "xmae-compare"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  common.add_encoder_arguments(p)
  common.add_probe_arguments(p)
  p.add_argument("--title", default="Encoder comparison")
  args = p.parse_args(argv)
  compare_lib.compare(
      common.encoder_specs(args), args.data, args.output_dir, args.task, modality=args.modality,
      splits=args.split, protocols=common.protocols(args), linear_cfg=common.linear_config(args),
      xmae_cfg=common.xmae_config(args), reuse_embeddings=args.reuse_embeddings,
      title=args.title, baseline=args.baseline)
  print((Path(args.output_dir) / "table.md").read_text())


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
