"""The model card of an exported encoder package (MODEL_CARD.md): what it was trained on, under
which licence, with which preprocessing, how well by which measure, and what it is not for.

`render(info, config)` writes it from the package's own package.json document (`info`) and saved
config (`config`, a dict), plus what the training dataset's directory says when it is still
readable (its manifest.json and xmae-prepare's report.json). Nothing is guessed: a fact that no
file states is written as "unknown" (a dataset licence, for one: xmae-prepare records none unless
the dataset's report or manifest carries a `license` entry).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

FILE = "MODEL_CARD.md"
# What the simulator source produces: no third-party recordings, so no data licence applies.
SIMULATED_LICENCE = "none needed: simulated signals (xmae-prepare --source synthetic)"
# Keys a dataset's report.json or manifest.json may use to name its licence.
LICENCE_KEYS = ("license", "licence", "data_license")


def dataset_facts(data_dir: str) -> dict[str, Any]:
  """{manifest, report} of a prepared dataset directory, each {} when unreadable."""
  facts: dict[str, Any] = {"manifest": {}, "report": {}}
  if not data_dir:
    return facts
  for key, name in (("manifest", "manifest.json"), ("report", "report.json")):
    try:
      facts[key] = json.loads((Path(data_dir) / name).read_text())
    except (OSError, ValueError):  # gone, moved or never written: the card says unknown
      pass
  return facts


def data_licence(facts: Mapping[str, Any]) -> str:
  """What the dataset's own files say of its licence, else "unknown"."""
  for doc in (facts["report"], facts["manifest"]):
    for key in LICENCE_KEYS:
      if doc.get(key):
        return str(doc[key])
  source = facts["report"].get("source") or facts["manifest"].get("source")
  return SIMULATED_LICENCE if source == "synthetic" else "unknown"


def _number(value, fmt: str = ".5f") -> str:
  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
    return format(value, fmt)
  return "unknown"


def _items(d: Mapping[str, Any]) -> list[str]:
  return [
      f"* `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}"
      for k, v in sorted(d.items())
  ]


def render(info: Mapping[str, Any], config: Mapping[str, Any]) -> str:
  """MODEL_CARD.md of the package described by `info` (package.json) and `config`."""
  source = info.get("source") or {}
  contract = info.get("contract") or {}
  data = config.get("data") or {}
  data_dir = str(data.get("dir") or "")
  facts = dataset_facts(data_dir)
  manifest, report = facts["manifest"], facts["report"]
  splits = manifest.get("splits") or {}
  modalities = "+".join(info.get("modalities") or [info.get("modality", "?")])
  lines = [
      f"# Model card: {info.get('model_name')} {modalities} encoder",
      "",
      f"Written by xmae-export (xmae-jax {info.get('package_version')}) on "
      f"{info.get('created_utc', 'unknown date')}, from this package's package.json and "
      'config.json. A field no file states is "unknown".',
      "",
      "## Model",
      f"* Architecture: {info.get('model_name')} (config.json holds every setting), the "
      f"{modalities} encoder{' and the shared bottleneck' if '+' in modalities else ''}; "
      f"{info.get('param_count', 0):,} parameters, embedding size {info.get('latent_dim')}.",
      f"* Weights: checkpoint step {source.get('step', 'unknown')} of "
      f"`{source.get('workdir') or source.get('random_init') or 'unknown'}`"
      f" (requested step: {source.get('requested_step', 'unknown')}).",
      "* Methods: xMAE (arXiv:2605.00973) and M2AE (arXiv:2605.09579), reimplemented in JAX; "
      "this package is not the authors' released weights.",
      "",
      "## Training data",
      f"* Dataset directory: `{data_dir or 'unknown'}`"
      + ("" if manifest else " (its manifest was not readable at export)")
      + ".",
      f"* Source: {report.get('source') or manifest.get('source') or 'unknown'}; input "
      f"`{report.get('input') or 'unknown'}`.",
      f"* Licence of the data: {data_licence(facts)}.",
  ]
  if splits:
    lines.append(
        "* Windows / subjects per split: "
        + ", ".join(
            f"{s} {e.get('records', '?')} / {e.get('subjects', '?')}"
            for s, e in sorted(splits.items())
        )
    )
  if report:
    lines.append(
        f"* Prepare report: {report.get('files_read', '?')}/"
        f"{report.get('files_total', '?')} inputs read, "
        f"{report.get('segments_kept', '?')} windows kept, "
        f"{report.get('segments_dropped_total', '?')} dropped (report.md in the dataset)."
    )
  lines += [
      "",
      "## Preprocessing (the input contract; `embed` applies it)",
      *_items({k: v for k, v in contract.items() if k != "normalization_text"}),
      f"* Normalization: {contract.get('normalization_text', 'unknown')}.",
  ]
  if info.get("preprocessing"):
    lines += ["", "Dataset preparation settings (xmae-prepare):", *_items(info["preprocessing"])]
  val_loss = source.get("val_loss")
  lines += [
      "",
      "## Metrics",
      f"* Validation loss (the pretraining objective on the dataset's val split): "
      f"{_number(val_loss)} at step {source.get('step', 'unknown')}"
      + (
          " (the lowest of the run: xmae-export --step auto/best)"
          if val_loss is not None and source.get("requested_step") in ("auto", "best")
          else ""
      )
      + ". Command: `xmae-train --config CONFIG --workdir "
      f"{source.get('workdir') or 'WORKDIR'}` (each evaluation is a line of WORKDIR/"
      "metrics.jsonl); this package: `xmae-export --workdir "
      f"{source.get('workdir') or 'WORKDIR'} --step {source.get('requested_step', 'auto')}`.",
      "* Downstream scores: none are bundled. Measure them on your data with "
      "`xmae-embed --encoder THIS_PACKAGE --input DATA --output E.npz` then "
      "`xmae-probe --embeddings E.npz --task all --output-dir REPORT`.",
      "",
      "## Limits",
      "* Research software, not a medical device: not validated for diagnosis or monitoring.",
      f"* Inputs must follow the contract above ({contract.get('segment_seconds', '?')} s at "
      f"{contract.get('sampling_rate', '?')} Hz per window, the same cleaning and "
      "normalization); other sensors, placements or rates than the training data's are "
      "untested.",
      "* The validation loss measures the pretraining objective, not a clinical task; a "
      "low loss on a small or simulated dataset says little about real recordings.",
      "* The training data's population, devices and label quality bound what the embeddings "
      "encode; check the dataset's own documentation and licence before sharing this package.",
  ]
  return "\n".join(lines) + "\n"
