"""xmae-import-torch: the xMAE reference's PyTorch weights -> an Orbax checkpoint of ours.

  xmae-import-torch --checkpoint xmae.pth --config configs/xmae.py --output runs/imported
  python -m xmae_jax.import_torch --checkpoint last.ckpt --config configs/xmae.py:paper \
      --output runs/imported

`--checkpoint` is the reference model's `state_dict()` saved with torch.save (a Lightning
checkpoint works too: its `state_dict` and `model.` prefix are unwrapped); it is read with
torch.load(weights_only=True), so torch (CPU build) must be installed. `--config FILE[:ARG]`
names the architecture (the paper preset matches the reference's cfg/xmae.yaml). The output is
a model checkpoint (step 0) plus config.json that `xmae_jax.training.checkpoint.load_model`,
`xmae-export` and `xmae-train` (as initial weights) read. Problems end with one line on stderr
and exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xmae_jax import config_lib


class ImportTorchError(ValueError):
  pass


def import_checkpoint(checkpoint: str, config, output: str) -> Path:
  """Converts `checkpoint` (a .pt/.pth path or a state-dict mapping) for `config` (a ConfigDict
  or a FILE[:ARG] spec) and writes it as step 0 of the workdir `output`. Returns the step dir."""
  from xmae_jax.interop import reference
  from xmae_jax.training import checkpoint as ckpt_lib
  if isinstance(config, str):
    config = config_lib.load(config)
  model = reference.from_reference_state_dict(checkpoint, config)
  return ckpt_lib.write_model_checkpoint(output, model, config)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="xmae-import-torch",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--checkpoint", required=True, help="the reference's .pt/.pth state dict")
  parser.add_argument("--config", required=True, help="config file, e.g. configs/xmae.py:paper")
  parser.add_argument("--output", required=True, help="workdir to write the checkpoint to")
  args = parser.parse_args(argv)
  try:
    step_dir = import_checkpoint(args.checkpoint, args.config, args.output)
  except ValueError as e:   # ImportTorchError, ReferenceStateDictError, CheckpointError, configs
    print(f"xmae-import-torch: error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {step_dir}")
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
