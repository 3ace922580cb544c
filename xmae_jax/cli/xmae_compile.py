"""xmae-compile: will a config's train step fit a TPU slice, and how fast would it run?

  xmae-compile --config configs/xmae.py:300m --topology v5p:4x4x4 --mesh data=16,fsdp=4 \
      --batch-size 4096

Compiles the trainer's own train step for the slice `--topology GEN:AxB[xC]` (v4, v5e, v5p,
v6e; e.g. v5p:2x2x1 is a v5p-8, v5e:4x4 a v5e-16, v6e:16x16 a v6e-256) on compile-only
devices from libtpu (`pip install "jax[tpu]"`; no TPU needed, the process runs on CPU), then
prints one JSON line and a table: chips, hosts, mesh, HBM per chip (arguments, outputs,
temporaries, code) against the chip's capacity, FLOPs per step, XLA's estimated step time and
what it projects (segments/s per chip and per host, MFU against the chip's bf16 peak), the
collectives per step by kind with their bytes, and the compile time.

`--mesh data=N,fsdp=M` (one size may be -1: the rest of the chips) replaces the config's
mesh.axes, `--batch-size` its global batch, `--dtype` its compute dtype; any
`--config.section.field=value` is applied as in xmae-train. A program that does not fit a chip's
HBM ends with one line naming what does not fit and by how much (exit status 1).
"""

from __future__ import annotations

import json
import os
import sys

from xmae_jax import config_lib
from xmae_jax.cli import common

PROG = "xmae-compile"


def mesh_axes(text: str) -> tuple[tuple[str, int], ...]:
  """`data=4,fsdp=2` -> (("data", 4), ("fsdp", 2))."""
  axes = []
  for part in (p for p in text.split(",") if p):
    name, eq, size = part.partition("=")
    try:
      axes.append((name.strip(), int(size)))
    except ValueError:
      raise common.UsageError(
          f"--mesh {text!r}: expected NAME=SIZE[,NAME=SIZE...], " "e.g. data=4,fsdp=2"
      ) from None
    if not eq or not name.strip():
      raise common.UsageError(f"--mesh {text!r}: expected NAME=SIZE[,NAME=SIZE...]")
  return tuple(axes)


def run(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  argv, overrides = config_lib.flag_overrides(argv)
  p = common.parser(PROG, __doc__)
  p.add_argument("--config", required=True, help="FILE[:PRESET[,key=value...]]")
  p.add_argument("--topology", required=True, help="GEN:AxB[xC], e.g. v5p:2x2x1, v5e:4x4")
  p.add_argument(
      "--mesh",
      default=None,
      help="mesh axes NAME=SIZE,..., e.g. data=4,fsdp=2 (default: config's mesh.axes)",
  )
  p.add_argument(
      "--batch-size",
      type=int,
      default=None,
      help="global batch (default: the config's train.batch_size)",
  )
  p.add_argument(
      "--dtype", default=None, help="compute dtype (default: the config's train.compute_dtype)"
  )
  args = p.parse_args(argv)
  if args.mesh is not None:
    overrides["mesh.axes"] = repr(mesh_axes(args.mesh))
  if args.batch_size is not None:
    overrides["train.batch_size"] = str(args.batch_size)
  if args.dtype is not None:
    overrides["train.compute_dtype"] = args.dtype
  config = config_lib.load(args.config, overrides)
  from xmae_jax.training import compile as compile_lib  # jax, after main() chose its platform

  compiled = compile_lib.compile_step(config, args.topology)
  record = compile_lib.report(compiled)
  record["config"] = args.config
  print(json.dumps(record), flush=True)
  print(compile_lib.table(record))


def main(argv=None) -> int:
  # Compile-only TPU devices need no TPU runtime: jax itself runs on CPU (with its TPU backend
  # enabled it would try to open the chips and wait for them). Set before jax is imported.
  os.environ["JAX_PLATFORMS"] = "cpu"
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
