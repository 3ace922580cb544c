"""xmae-compare: several frozen encoders on the same data, tasks and folds -> table + bar chart.

  xmae-compare --data DIR --output-dir OUT \
      --encoder xmae=runs/xmae --encoder ppg_mae=exports/ppg_mae \
      --random random=configs/xmae.py:demo [--task hr --task ptt | --task all]
      [--split test] [--protocol linear|xmae|both] [--baseline random] [--retention]

--encoder NAME=PATH: an exported package or a training workdir (repeatable).
--random NAME=CONFIG_FILE[:ARG]: that config's model, randomly initialized (--random-seed).
--modalities ppg|ecg: the input of every encoder; an M2AE ppg+ecg package gives its fingerprint
from that modality alone (so M2AE sits beside the xMAE-family PPG encoders).
--retention: also, for every encoder that takes both modalities (M2AE), its PPG-alone, ECG-alone
and both-modality fingerprints of the same windows on identical folds, and the retention ratios
(one modality / both) with paired subject-bootstrap CIs: a table.md section and
OUT/retention.json (encoders without both modalities are listed as skipped; none is an error).
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
  p.add_argument(
      "--retention",
      action="store_true",
      help="single-modality retention of encoders that take ppg and ecg (M2AE)",
  )
  args = p.parse_args(argv)
  compare_lib.compare(
      common.encoder_specs(args),
      args.data,
      args.output_dir,
      args.task,
      modality=args.modality,
      splits=args.split,
      protocols=common.protocols(args),
      linear_cfg=common.linear_config(args),
      xmae_cfg=common.xmae_config(args),
      reuse_embeddings=args.reuse_embeddings,
      title=args.title,
      baseline=args.baseline,
      retention=args.retention,
  )
  print((Path(args.output_dir) / "table.md").read_text())


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
