"""xmae-import-torch: the xMAE reference's PyTorch weights -> an Orbax checkpoint of ours.

  xmae-import-torch --checkpoint xmae.pth --config configs/xmae.py --workdir runs/imported
  python -m xmae_jax.cli.xmae_import_torch --checkpoint last.ckpt --config configs/xmae.py:paper \
      --workdir runs/imported

`--checkpoint` is the reference model's `state_dict()` saved with torch.save (a Lightning
checkpoint works too: its `state_dict` and `model.` prefix are unwrapped); it is read with
torch.load(weights_only=True), so torch (CPU build) must be installed. `--config FILE[:ARG]`
names the architecture (the paper preset matches the reference's cfg/xmae.yaml). The output is
a model checkpoint (step 0) plus config.json that `xmae_jax.training.model_checkpoint.load_model`,
`xmae-export` and `xmae-train` (as initial weights) read. The library is
xmae_jax.interop.reference.import_checkpoint.
"""

from __future__ import annotations

import sys

from xmae_jax.cli import common
from xmae_jax.interop import reference

PROG = "xmae-import-torch"


def run(argv=None) -> None:
  p = common.parser(PROG, __doc__)
  p.add_argument("--checkpoint", required=True, help="the reference's .pt/.pth state dict")
  p.add_argument("--config", required=True, help="config file, e.g. configs/xmae.py:paper")
  p.add_argument(
      "--workdir",
      dest="output",
      deprecated=("--output",),
      required=True,
      help="workdir to write the checkpoint to",
  )
  args = p.parse_args(argv)
  step_dir = reference.import_checkpoint(args.checkpoint, args.config, args.output)
  print(f"wrote {step_dir}")


def main(argv=None) -> int:
  return common.call(PROG, run, argv)


if __name__ == "__main__":
  sys.exit(main())
