"""xmae-recon-report: cross-modal reconstruction (ECG from PPG; both ways for M2AE), held out.

  xmae-recon-report --model xmae=runs/xmae [--model nobridge=runs/nobridge] \
      [--model m2ae=runs/m2ae] --data DATASET_DIR [--split test] \
      [--wfdb WFDB_DIR] --output-dir OUT

--model NAME=WORKDIR: a training or xmae-import-torch workdir of a model with the xMAE call
contract (xMAE; its no-bridge variant reconstructs from visible ECG only: the control), scored
as masked ECG from PPG (direction ecg<-ppg), or of M2AE, scored both ways on the whole waveform
decoded from the other modality alone (ecg<-ppg: R-peak timing; ppg<-ecg: pulse-foot timing).
--data: a prepared dataset; its --split (default test: subjects the model never trained on).
--wfdb: WFDB records or folders (repeatable), windowed by the same preprocessing, each
model's with the PPG moved as its training data's was (--ppg-align-seconds /
--ppg-delay-seconds of xmae-prepare, read from its dataset's manifest; each row's notes say
which: ppg_alignment).
--timing-ceiling: per data source, the loss a reconstruction would reach from PPG beat timing
alone (reconstruction.timing_ceiling), beside each window's mean and its true R-peaks.
Writes OUT/reconstruction.md, OUT/reconstruction.json and OUT/figures/*.png
(xmae_jax.evaluation.reconstruction.build_report).
"""

from __future__ import annotations

import sys
from pathlib import Path

from xmae_jax import paths
from xmae_jax.cli import common
from xmae_jax.evaluation import compare as compare_lib
from xmae_jax.evaluation import reconstruction as recon_lib

PROG = "xmae-recon-report"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  p.add_argument("--model", action="append", default=[], help="NAME=WORKDIR (repeatable)")
  p.add_argument(
      "--data",
      action="append",
      default=[],
      help="a prepared dataset dir, or LABEL=DIR (repeatable)",
  )
  p.add_argument(
      "--wfdb",
      action="append",
      default=[],
      help="WFDB record or folder, or LABEL=PATH (repeatable)",
  )
  p.add_argument("--split", default="test")
  p.add_argument("--step", default="auto")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
      "--min-quality",
      type=float,
      default=None,
      help="keep windows with both template-match qualities >= this",
  )
  p.add_argument("--tolerance-ms", type=float, default=150.0)
  p.add_argument(
      "--timing-ceiling",
      action="store_true",
      help="also report, per data source, what PPG beat timing alone could explain "
      "of the ECG (reconstruction.timing_ceiling)",
  )
  p.add_argument("--output-dir", required=True)
  args = p.parse_args(argv)
  models = [compare_lib.parse_named(m, "--model") for m in args.model]
  data = [
      (
          compare_lib.parse_named(d, "--data")
          if "=" in d
          else (f"{Path(d).name} ({args.split} split)", d)
      )
      for d in args.data
  ]
  data += [
      (compare_lib.parse_named(w, "--wfdb") if "=" in w else (Path(w).name, w)) for w in args.wfdb
  ]
  recon_lib.build_report(
      models,
      data,
      args.output_dir,
      split=args.split,
      step=args.step,
      seed=args.seed,
      min_quality=args.min_quality,
      tolerance_ms=args.tolerance_ms,
      with_ceiling=args.timing_ceiling,
  )
  print((paths.path(args.output_dir) / "reconstruction.md").read_text())


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
