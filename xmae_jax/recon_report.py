"""python -m xmae_jax.recon_report: masked-ECG-from-PPG reconstruction on held-out paired data.

  python -m xmae_jax.recon_report --model xmae=runs/xmae [--model nobridge=runs/nobridge] \
      --data DATASET_DIR [--split test] [--wfdb ../shared/data/physionet] --output-dir OUT

--model NAME=WORKDIR: a training or xmae-import-torch workdir of a model with the xMAE call
contract (xMAE; its no-bridge variant reconstructs from visible ECG only: the control).
--data: a prepared dataset; its --split (default test: subjects the model never trained on).
--wfdb: WFDB records or folders (repeatable), windowed by the same preprocessing.
Writes OUT/reconstruction.md, OUT/reconstruction.json and OUT/figures/*.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from xmae_jax.evaluation import compare as compare_lib
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import reconstruction as recon_lib


def build_report(models: Sequence[tuple[str, str]], data_sources: Sequence[tuple[str, str]],
                 out_dir, *, split: str = "test", step: str = "auto", seed: int = 0,
                 min_quality: float | None = None, tolerance_ms: float = 150.0) -> dict:
  """models: (name, workdir); data_sources: (label, path). Returns the report dict."""
  from xmae_jax.training import checkpoint
  out = Path(out_dir)
  rows = []
  loaded = []
  for name, workdir in models:
    model, config = checkpoint.load_model(workdir, step=encoder_lib.resolve_step(workdir, step))
    loaded.append((name, model, config))
  if not loaded:
    raise recon_lib.ReconstructionError("no --model given")
  contract = encoder_lib.Contract.from_config(loaded[0][2])
  for label, path in data_sources:
    ppg, ecg, notes = recon_lib.paired_segments(path, contract=contract, split=split,
                                                min_quality=min_quality)
    for name, model, config in loaded:
      fig = out / "figures" / f"{name}_{_slug(label)}.png"
      r = recon_lib.evaluate(model, config, ppg, ecg, fs=contract.sampling_rate, seed=seed,
                             tolerance_ms=tolerance_ms, figure=str(fig),
                             title=f"{name} on {label}: masked ECG reconstructed (shaded = masked)")
      rows.append({"name": name, "data": label, "path": str(path), "notes": notes, **r})
  report = {"seed": seed, "fs": contract.sampling_rate, "tolerance_ms": tolerance_ms,
            "split": split, "min_quality": min_quality, "rows": rows}
  compare_lib._write_text(out / "reconstruction.json", json.dumps(report, indent=1, default=float))
  compare_lib._write_text(out / "reconstruction.md", recon_lib.report_markdown(report))
  return report


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _pair(text: str, what: str) -> tuple[str, str]:
  name, sep, value = text.partition("=")
  if not sep or not name or not value:
    raise recon_lib.ReconstructionError(f"{what} {text!r}: expected NAME=PATH")
  return name, value


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xmae_jax.recon_report",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", action="append", default=[], help="NAME=WORKDIR (repeatable)")
  parser.add_argument("--data", action="append", default=[],
                      help="a prepared dataset dir, or LABEL=DIR (repeatable)")
  parser.add_argument("--wfdb", action="append", default=[],
                      help="WFDB record or folder, or LABEL=PATH (repeatable)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--step", default="auto")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min-quality", type=float, default=None,
                      help="keep windows with both template-match qualities >= this")
  parser.add_argument("--tolerance-ms", type=float, default=150.0)
  parser.add_argument("--output-dir", required=True)
  args = parser.parse_args(argv)
  try:
    models = [_pair(m, "--model") for m in args.model]
    data = [(_pair(d, "--data") if "=" in d else (f"{Path(d).name} ({args.split} split)", d))
            for d in args.data]
    data += [(_pair(w, "--wfdb") if "=" in w else (Path(w).name, w)) for w in args.wfdb]
    if not data:
      raise recon_lib.ReconstructionError("give --data and/or --wfdb")
    build_report(models, data, args.output_dir, split=args.split, step=args.step, seed=args.seed,
                 min_quality=args.min_quality, tolerance_ms=args.tolerance_ms)
  except (recon_lib.ReconstructionError, embed_lib.EmbeddingsError, encoder_lib.EncoderError,
          ValueError) as e:
    print(f"xmae-recon-report: {e}", file=sys.stderr)
    return 1
  print((Path(args.output_dir) / "reconstruction.md").read_text())
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
