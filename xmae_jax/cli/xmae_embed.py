"""xmae-embed: embeddings of every segment of an input, with subject ids, segment ids and labels.

  xmae-embed --encoder OUT --input PATH --output FILE.npz [--source dataset|wfdb|csv|npz|edf]
             [--modalities ppg|ecg|ppg,ecg] [--split test ...]
             [reader options of xmae-prepare, e.g. for CSV/NPZ files]

PATH is a prepared dataset directory (xmae-prepare), a WFDB record (or a folder of them, incl.
the MIMIC-III matched layout), or a CSV/NPZ/EDF file (--labels FILE joins a labels file to
raw inputs, see xmae_jax/data/labels.py); raw inputs go through the same cleaning,
resampling, 10-s windowing and normalization as prepared data. --encoder is an exported package
(xmae-export) or a training workdir. --modalities: the inputs the embeddings are computed from
(default: every modality the encoder takes); `ppg,ecg` (or one of them) with an M2AE ppg+ecg
package or workdir gives its fingerprints from both (or one). The output format is in
xmae_jax/evaluation/embed.py.
"""

from __future__ import annotations

import json
import sys

from xmae_jax.cli import common
from xmae_jax.data import sources
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module

PROG = "xmae-embed"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__, conflict_handler="resolve")
  p.add_argument("--encoder", required=True, help="exported package or training workdir")
  p.add_argument("--input", required=True)
  p.add_argument("--output", required=True, help="embeddings .npz to write")
  p.add_argument(
      "--source",
      choices=("dataset", *sources.FILE_READERS),
      default=None,
      help="input format (default: detected from PATH)",
  )
  p.add_argument(
      "--split",
      action="append",
      default=None,
      help="dataset split(s) to embed (repeatable; default all)",
  )
  p.add_argument(
      "--modality",
      choices=("ppg", "ecg", "ppg+ecg"),
      default=None,
      help="for a workdir: which encoder (default ppg, or what --modalities names)",
  )
  p.add_argument(
      "--modalities",
      default=None,
      help="ppg | ecg | ppg,ecg: the inputs to embed from (default: the encoder's)",
  )
  p.add_argument("--step", default="auto", help="for a workdir: auto | best | latest | N")
  p.add_argument("--batch-size", type=int, default=256)
  common.add_reader_arguments(p)
  args = p.parse_args(argv)
  modalities = encoder_module.parse_modalities(args.modalities) if args.modalities else None
  embed_lib.check_output(args.output)  # before the encoder is loaded and the input read
  enc = encoder_lib.load_encoder(
      args.encoder,
      step=args.step,
      batch_size=args.batch_size,
      modality=args.modality or (encoder_module.modality_name(modalities) if modalities else None),
  )
  summary = embed_lib.embed_input(
      enc,
      args.input,
      args.output,
      modalities=modalities,
      source=args.source,
      splits=args.split,
      options=vars(args),
  )
  print(json.dumps(summary))


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
