"""xmae-retrieval: cross-modal retrieval with M2AE fingerprints (top-1/top-5 against chance).

  xmae-retrieval --encoder OUT --input PATH [--split test] --query ecg --gallery ppg \
      --gallery-size N [--seed S] [--bootstrap B] --output-dir DIR

For each query window (its --query fingerprint alone), is its own --gallery fingerprint the
nearest by cosine (top-1), or within the 5 nearest (top-5), among N gallery windows: itself and
one window each of N-1 other subjects? --encoder: an M2AE ppg+ecg package (xmae-export
--modality ppg+ecg) or an M2AE workdir. PATH: a prepared dataset or a folder of WFDB records
(read as xmae-embed reads them; reader options as xmae-prepare's). Prints one JSON line; writes
DIR/results.json and DIR/table.md.
"""

from __future__ import annotations

import json
import sys

from xmae_jax.cli import common
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib
from xmae_jax.evaluation import retrieval as retrieval_lib

PROG = "xmae-retrieval"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__, conflict_handler="resolve")
  p.add_argument("--encoder", required=True, help="M2AE ppg+ecg package or M2AE workdir")
  p.add_argument(
      "--input",
      dest="data",
      deprecated=("--data",),
      required=True,
      help="prepared dataset, WFDB record folder, CSV/NPZ",
  )
  p.add_argument(
      "--split", action="append", default=None, help="dataset split(s) (repeatable; default all)"
  )
  p.add_argument("--query", choices=package_lib.MODALITIES, default="ecg")
  p.add_argument("--gallery", choices=package_lib.MODALITIES, default="ppg")
  p.add_argument(
      "--gallery-size",
      type=int,
      required=True,
      help="N: the own window plus N-1 windows of other subjects",
  )
  p.add_argument("--seed", type=int, default=0, help="gallery draws and bootstrap seed")
  p.add_argument(
      "--bootstrap", type=common.int_at_least(1), default=1000, help="subject bootstrap resamples"
  )
  p.add_argument("--output-dir", required=True)
  p.add_argument(
      "--source",
      choices=("dataset", "wfdb", "csv", "npz"),
      default=None,
      help="input format (default: detected from PATH)",
  )
  p.add_argument("--step", default="auto", help="for a workdir: auto | best | latest | N")
  p.add_argument("--batch-size", type=int, default=256)
  common.add_reader_arguments(p)
  args = p.parse_args(argv)
  enc = encoder_lib.load_encoder(
      args.encoder,
      step=args.step,
      batch_size=args.batch_size,
      modality=encoder_module.modality_name((args.query, args.gallery)),
  )
  result = retrieval_lib.retrieve(
      enc,
      args.data,
      query=args.query,
      gallery=args.gallery,
      gallery_size=args.gallery_size,
      seed=args.seed,
      n_bootstrap=args.bootstrap,
      splits=args.split,
      source=args.source,
      options=vars(args),
  )
  paths = retrieval_lib.write_report(result, args.output_dir)
  print(
      json.dumps(
          {
              k: result[k]
              for k in (
                  "query",
                  "gallery",
                  "gallery_size",
                  "top1",
                  "chance_top1",
                  "top5",
                  "chance_top5",
                  "median_rank",
                  "n_queries",
                  "n_subjects",
              )
          }
          | {"table": str(paths["markdown"])}
      )
  )


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
