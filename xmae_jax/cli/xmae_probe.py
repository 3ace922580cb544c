"""xmae-probe: score frozen embeddings on downstream tasks (JSON + Markdown table).

  xmae-probe --embeddings FILE.npz --task hr --task pvc [--protocol linear|xmae|both]
             [--output-dir OUT]

`--task all` runs every registered task whose fields the file carries. Tasks take a parameter
after a colon: `age_over:60`, `hypertension:clinical`. Any label column is a task:
`--task label:NAME[:classification|regression]` (the kind inferred when omitted; e.g. a column of
the labels file given to xmae-prepare --labels). See xmae_jax/evaluation/probe.py for the
two protocols.
"""

from __future__ import annotations

import sys

from xmae_jax import paths
from xmae_jax.cli import common
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import report

PROG = "xmae-probe"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  p.add_argument("--embeddings", required=True, help="an .npz written by xmae-embed")
  common.add_probe_arguments(p)
  p.add_argument(
      "--output-dir",
      default=None,
      help="report directory: results.json and table.md, as xmae-compare writes",
  )
  p.add_argument("--output-json", default=None, help="the JSON results to this file instead")
  p.add_argument("--output-md", default=None, help="the Markdown table to this file instead")
  args = p.parse_args(argv)
  if args.output_dir:
    args.output_json = args.output_json or paths.text(paths.path(args.output_dir) / "results.json")
    args.output_md = args.output_md or paths.text(paths.path(args.output_dir) / "table.md")
  results = probe_lib.probe_file(
      args.embeddings,
      args.task,
      protocols=common.protocols(args),
      linear_cfg=common.linear_config(args),
      xmae_cfg=common.xmae_config(args),
  )
  print(report.write_probe_report(results, args.output_json, args.output_md))


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
