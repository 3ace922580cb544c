"""xmae-prepare: raw recordings -> a dataset directory of ArrayRecord shards + manifest.

  xmae-prepare --source synthetic --output data/demo --num-subjects 40 --minutes-per-subject 2
  xmae-prepare --source wfdb --input physionet_records/ --output data/physionet
  xmae-prepare --source pulsedb --input PulseDB_MIMIC/ --output data/pulsedb --workers 8
  xmae-prepare --source csv --input recordings/ --fs 250 --labels labels.csv --output data/mine
  xmae-prepare --source edf --input sleep/ --edf-ppg-names Pleth --output data/sleep

Also `python -m xmae_jax.cli.xmae_prepare`. The library is xmae_jax.data.prepare.prepare_dataset.
"""

from __future__ import annotations

import argparse
import os
import sys

from xmae_jax.cli import common
from xmae_jax.data import labels as labels_lib
from xmae_jax.data import prepare as prepare_lib
from xmae_jax.data import prepare_local
from xmae_jax.data import prepare_rules
from xmae_jax.data import preprocess as pp
from xmae_jax.data import sources as sources_lib

PROG = "xmae-prepare"


def build_parser() -> argparse.ArgumentParser:
  p = common.parser(PROG, __doc__)
  p.add_argument("--source", help=f"one of {', '.join(sources_lib.READERS)}")
  p.add_argument(
      "--input",
      default=None,
      help="file or directory, local or gs:// (copied to a local mirror first); "
      "not needed for synthetic",
  )
  p.add_argument("--output", help="dataset directory to write")
  p.add_argument(
      "--overwrite",
      action="store_true",
      help="replace a dataset in --output made from other inputs or settings",
  )
  p.add_argument(
      "--verify",
      metavar="DIR",
      default=None,
      help="check every record, index and manifest of the dataset DIR; prepare nothing",
  )
  p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
  p.add_argument("--seed", type=int, default=77, help="subject split (and simulator) seed")
  p.add_argument("--test-frac", type=float, default=0.05)
  p.add_argument("--val-frac", type=float, default=0.05)
  p.add_argument(
      "--min-quality",
      type=float,
      default=None,
      help="drop segments below this quality now (default: keep all; the input "
      "pipeline applies its threshold when reading)",
  )
  p.add_argument(
      "--stride-seconds",
      type=float,
      default=None,
      help="window stride (default: 10 s, non-overlapping)",
  )
  p.add_argument(
      "--require-modalities",
      dest="modalities",
      deprecated=("--modalities",),
      default="both",
      choices=sorted(pp.REQUIREMENTS),
      help="modalities a kept segment must have",
  )
  p.add_argument("--max-flat-seconds", type=float, default=pp.PreprocessConfig.max_flat_seconds)
  p.add_argument(
      "--max-nan-gap-seconds", type=float, default=pp.PreprocessConfig.max_nan_gap_seconds
  )
  p.add_argument(
      "--ppg-delay-seconds",
      type=float,
      default=0.0,
      help="the recording system's delay of PPG behind ECG beyond physiology (e.g. a "
      "monitor's processing delay); PPG is moved this much earlier (default 0)",
  )
  p.add_argument(
      "--ppg-align-seconds",
      type=float,
      default=None,
      help="measure each recording's delay from R-peak to PPG systolic peak and move "
      "its PPG so that the delay becomes this (e.g. 0.35; --ppg-delay-seconds is "
      "the fallback where too few clean beats); default: off",
  )
  p.add_argument("--records-per-shard", type=int, default=4096)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument(
      "--runner",
      default="local",
      help="local (a process pool on this machine) or beam (an Apache Beam pipeline)",
  )
  p.add_argument(
      "--beam-options",
      default=None,
      help='Beam pipeline options for --runner beam, e.g. "--runner=DataflowRunner '
      '--project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py"',
  )
  sources_lib.add_arguments(p)
  labels_lib.add_arguments(p)
  return p


def run(argv=None) -> dict:
  """Parses argv and prepares the dataset; raises XmaeError for an unusable command line."""
  args = build_parser().parse_args(argv)
  if args.verify is not None:
    return {"verdicts": prepare_lib.verify(args.verify)}
  missing = [f for f, v in (("--source", args.source), ("--output", args.output)) if v is None]
  if missing:  # required unless --verify, in argparse's words
    raise common.UsageError(f"the following arguments are required: {', '.join(missing)}")
  if args.source not in sources_lib.READERS:
    raise prepare_rules.PrepareError(
        f"unknown source {args.source!r} " f"(choose from {', '.join(sources_lib.READERS)})"
    )
  config = pp.PreprocessConfig(
      stride_seconds=args.stride_seconds,
      modalities=args.modalities,
      min_quality=args.min_quality,
      max_flat_seconds=args.max_flat_seconds,
      max_nan_gap_seconds=args.max_nan_gap_seconds,
      ppg_delay_seconds=args.ppg_delay_seconds,
      ppg_align_seconds=args.ppg_align_seconds,
  )
  # only the chosen reader's own flags: they key the resume cache
  options = {k: getattr(args, k) for k in sources_lib.option_names(args.source)}
  options.update({k: getattr(args, k) for k in labels_lib.OPTIONS if getattr(args, k)})
  return prepare_lib.prepare_dataset(
      args.source,
      args.input,
      args.output,
      workers=args.workers,
      seed=args.seed,
      test_frac=args.test_frac,
      val_frac=args.val_frac,
      config=config,
      source_options=options,
      records_per_shard=args.records_per_shard,
      progress=not args.no_progress,
      runner=args.runner,
      beam_options=args.beam_options,
      overwrite=args.overwrite,
  )


def main(argv=None) -> int:
  try:
    return common.call(PROG, run, argv)
  except prepare_local.Interrupted as e:  # SIGTERM/SIGINT: one line, the signal's exit status
    common.fail(PROG, e)
    return 128 + e.signum


if __name__ == "__main__":
  sys.exit(main())
