"""xmae-embed: embeddings of every segment of an input, with subject ids, segment ids and labels.

  xmae-embed --encoder OUT --input PATH --output FILE.npz [--source dataset|wfdb|csv|npz]
             [--split test ...] [reader options of xmae-prepare, e.g. for CSV/NPZ files]

PATH is a prepared dataset directory (xmae-prepare), a WFDB record (or a folder of them, incl.
the MIMIC-III matched layout), or a CSV/NPZ file; raw inputs go through the same cleaning,
resampling, 10-s windowing and normalization as prepared data. --encoder is an exported package
(xmae-export) or a training workdir. The output format is in xmae_jax/evaluation/embed.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from xmae_jax.cli import common
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib

PROG = "xmae-embed"
# Reader modules whose options xmae-embed accepts (as xmae-prepare does).
READER_MODULES = ("xmae_jax.data.sources.wfdb", "xmae_jax.data.sources.tabular")


def _add_reader_arguments(parser: argparse.ArgumentParser) -> None:
  for name in READER_MODULES:
    try:
      module = importlib.import_module(name)
    except ImportError:
      continue
    try:
      module.add_arguments(parser)
    except argparse.ArgumentError:   # an option another reader already declared
      pass


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__, conflict_handler="resolve")
  p.add_argument("--encoder", required=True, help="exported package or training workdir")
  p.add_argument("--input", required=True)
  p.add_argument("--output", required=True, help="embeddings .npz to write")
  p.add_argument("--source", choices=("dataset", "wfdb", "csv", "npz"), default=None,
                 help="input format (default: detected from PATH)")
  p.add_argument("--split", action="append", default=None,
                 help="dataset split(s) to embed (repeatable; default all)")
  p.add_argument("--modality", choices=("ppg", "ecg"), default=None,
                 help="for a workdir: which encoder (default ppg)")
  p.add_argument("--step", default="auto", help="for a workdir: auto | best | latest | N")
  p.add_argument("--batch-size", type=int, default=256)
  _add_reader_arguments(p)
  args = p.parse_args(argv)
  enc = encoder_lib.load_encoder(args.encoder, step=args.step, modality=args.modality,
                                 batch_size=args.batch_size)
  summary = embed_lib.embed_input(enc, args.input, args.output, source=args.source,
                                  splits=args.split, options=vars(args))
  print(json.dumps(summary))


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
