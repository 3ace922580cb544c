"""xmae-probe: score frozen embeddings on downstream tasks (JSON + Markdown table).

  xmae-probe --embeddings FILE.npz --task hr --task pvc [--protocol linear|xmae|both]
             [--output-json OUT.json] [--output-md OUT.md]

`--task all` runs every registered task whose fields the file carries. Tasks take a parameter
after a colon: `age_over:60`, `hypertension:clinical`. See xmae_jax/evaluation/probe.py for the
two protocols.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import tasks as tasks_lib


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
  """The task and protocol options shared by xmae-probe, xmae-compare and the timing report."""
  parser.add_argument("--task", action="append", default=None,
                      help="task spec (repeatable), e.g. hr, age_over:60, hypertension:clinical, "
                           f"or 'all'; known: {', '.join(tasks_lib.REGISTRY)}")
  parser.add_argument("--protocol", choices=("linear", "xmae", "both"), default="linear")
  parser.add_argument("--folds", type=int, default=5, help="outer subject-grouped folds")
  parser.add_argument("--inner-folds", type=int, default=3)
  parser.add_argument("--bootstrap", type=int, default=1000, help="subject bootstrap resamples")
  parser.add_argument("--seed", type=int, default=0, help="folds/bootstrap seed (linear protocol)")
  parser.add_argument("--xmae-folds", choices=("subject", "segment"), default="subject",
                      help="the xmae protocol's folds (its own seed is 77)")


def probe_configs(args) -> tuple[probe_lib.LinearProbeConfig, probe_lib.XMAEProbeConfig]:
  return (probe_lib.LinearProbeConfig(outer_folds=args.folds, inner_folds=args.inner_folds,
                                      seed=args.seed, n_bootstrap=args.bootstrap),
          probe_lib.XMAEProbeConfig(group_folds=args.xmae_folds == "subject"))


def protocols(args) -> tuple[str, ...]:
  return ("linear", "xmae") if args.protocol == "both" else (args.protocol,)


def resolve_tasks(specs: Sequence[str] | None, fields) -> tuple[list[str], bool]:
  """(task specs, skip the unavailable): `all` or nothing = every task the data can support."""
  if not specs or specs == ["all"]:
    return list(tasks_lib.DEFAULT_TASKS), True
  for spec in specs:
    tasks_lib.parse(spec)
  return list(specs), False


def probe_file(path: str | os.PathLike, specs: Sequence[str] | None, *, protocols=("linear",),
               linear_cfg=probe_lib.LinearProbeConfig(), xmae_cfg=probe_lib.XMAEProbeConfig()
               ) -> list[dict[str, Any]]:
  arrays = embed_lib.load_embeddings(path)
  fields = tasks_lib.fields_from_arrays(arrays)
  task_specs, skip = resolve_tasks(specs, fields)
  results = probe_lib.run_tasks(arrays["embeddings"], arrays["subject_ids"], fields, task_specs,
                                protocols=protocols, linear_cfg=linear_cfg, xmae_cfg=xmae_cfg,
                                skip_unavailable=skip)
  if not results:
    raise tasks_lib.TaskError(f"{path}: none of the tasks {', '.join(task_specs)} has its fields "
                              "in this file")
  return results


def write_reports(results, output_json: str | None, output_md: str | None, **extra) -> str:
  table = probe_lib.markdown_table(results, **extra)
  for path, text in ((output_json, json.dumps(probe_lib.json_ready(results), indent=1, default=float)), (output_md, table)):
    if path:
      p = Path(path)
      p.parent.mkdir(parents=True, exist_ok=True)
      tmp = p.with_name(p.name + ".tmp")
      tmp.write_text(text)
      os.replace(tmp, p)
  return table


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="xmae-probe", description=__doc__.split("\n")[0])
  parser.add_argument("--embeddings", required=True, help="an .npz written by xmae-embed")
  add_probe_arguments(parser)
  parser.add_argument("--output-json", default=None)
  parser.add_argument("--output-md", default=None)
  args = parser.parse_args(argv)
  linear_cfg, xmae_cfg = probe_configs(args)
  try:
    results = probe_file(args.embeddings, args.task, protocols=protocols(args),
                         linear_cfg=linear_cfg, xmae_cfg=xmae_cfg)
  except (embed_lib.EmbeddingsError, tasks_lib.TaskError, probe_lib.ProbeError) as e:
    print(f"xmae-probe: {e}", file=sys.stderr)
    return 1
  print(write_reports(results, args.output_json, args.output_md))
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
