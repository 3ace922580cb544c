"""xmae-compare: several frozen encoders on the same data, tasks and folds -> table + bar chart.

  xmae-compare --data DIR --output-dir OUT \
      --encoder xmae=runs/xmae --encoder ppg_mae=exports/ppg_mae \
      --random random=configs/xmae.py:demo [--task hr --task ptt | --task all]
      [--split test] [--protocol linear|xmae|both]

--encoder NAME=PATH: an exported package or a training workdir (repeatable).
--random NAME=CONFIG_FILE[:ARG]: that config's model, randomly initialized (--random-seed).
Writes OUT/table.md, OUT/results.json, OUT/comparison.png and OUT/embeddings/NAME.npz.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from xmae_jax import probe as probe_cli
from xmae_jax.data import shards
from xmae_jax.evaluation import compare as compare_lib
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import tasks as tasks_lib

ERRORS = (compare_lib.CompareError, embed_lib.EmbeddingsError, encoder_lib.EncoderError,
          encoder_lib.EncoderInputError, tasks_lib.TaskError, probe_lib.ProbeError,
          shards.DatasetError)


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data", required=True, help="a prepared dataset directory")
  parser.add_argument("--output-dir", required=True)
  parser.add_argument("--encoder", action="append", default=[], help="NAME=PATH (repeatable)")
  parser.add_argument("--random", action="append", default=[],
                      help="NAME=CONFIG_FILE[:ARG] or NAME=WORKDIR|PACKAGE (its config): a randomly "
                           "initialized encoder (repeatable)")
  parser.add_argument("--random-seed", type=int, default=0)
  parser.add_argument("--step", default="auto", help="checkpoint of workdir encoders")
  parser.add_argument("--modality", choices=("ppg", "ecg"), default="ppg")
  parser.add_argument("--split", action="append", default=None,
                      help="dataset split(s) to embed and probe (default: all)")
  parser.add_argument("--reuse-embeddings", action="store_true",
                      help="reuse OUT/embeddings/NAME.npz files that exist")


def specs_from_args(args) -> list[compare_lib.EncoderSpec]:
  return ([compare_lib.parse_spec(s, step=args.step) for s in args.encoder]
          + [compare_lib.parse_spec(s, random=True, seed=args.random_seed) for s in args.random])


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="xmae-compare", description=__doc__.split("\n")[0])
  add_encoder_arguments(parser)
  probe_cli.add_probe_arguments(parser)
  parser.add_argument("--title", default="Encoder comparison")
  parser.add_argument("--baseline", default=None,
                      help="encoder NAME to report paired differences against (e.g. random)")
  args = parser.parse_args(argv)
  linear_cfg, xmae_cfg = probe_cli.probe_configs(args)
  try:
    specs = specs_from_args(args)
    compare_lib.compare(
        specs, args.data, args.output_dir, args.task, modality=args.modality, splits=args.split,
        protocols=probe_cli.protocols(args), linear_cfg=linear_cfg, xmae_cfg=xmae_cfg,
        reuse_embeddings=args.reuse_embeddings, title=args.title, baseline=args.baseline)
  except ERRORS as e:
    print(f"xmae-compare: {e}", file=sys.stderr)
    return 1
  print((Path(args.output_dir) / "table.md").read_text())
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
