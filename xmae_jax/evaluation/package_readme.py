"""The README.md of an exported encoder package: what it holds, its input contract, how to load it
with and without JAX, and its tensors. `render(info)` writes it from the package's own
package.json document (`package.package_info`), so it never states what the package lacks.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def render(info: Mapping[str, Any]) -> str:
  """README.md of the package whose package.json document is `info`."""
  c, weights = info["contract"], info["weights"]
  modalities = tuple(info["modalities"])
  what = "+".join(modalities).upper()
  if len(modalities) > 1:
    what_text = (
        f"Frozen {info['model_name']} fingerprint encoder of "
        f"{' and '.join(m.upper() for m in modalities)} "
        "(each modality's encoder and the shared bottleneck): either modality alone or "
        "both give a fingerprint in one latent space"
    )
    loading = [
        "z = enc.embed(ppg=p, ecg=e, fs=125)       # p, e: (N, L) the same windows -> (N, latent)",
        "z_ppg = enc.embed(ppg=p, fs=125)          # PPG alone: same space, same shape",
        "z_ecg = enc.embed(ecg=e, fs=125)          # ECG alone",
        "z = enc.embed_prepared(ppg=W1, ecg=W2)    # prepared (N, L) windows, no preprocessing",
    ]
  else:
    what_text = f"Frozen {what} encoder"
    loading = [
        "z = enc.embed(x, fs=125)                  # x: (N, L) raw or prepared -> (N, latent)",
        f"z = enc.embed({modalities[0]}=x, fs=125)  # the same, by keyword",
    ]
  lines = [
      f"# {info['model_name']} {what} encoder (xmae-jax {info['package_version']})",
      "",
      f"{what_text}, {info['param_count']:,} parameters, "
      f"embedding size {info['latent_dim']}. Source: {json.dumps(info['source'])}.",
      "",
      "## Input contract",
      f"* {c['segment_length']} samples = {c['segment_seconds']:g} s at {c['sampling_rate']:g} Hz, "
      "one segment per row, float32.",
      f"* Normalization: {c['normalization_text']}.",
      f"* Training data were cleaned with NeuroKit2 (`ecg_clean` method {c['ecg_clean_method']!r}, "
      f"`ppg_clean` method {c['ppg_clean_method']!r}) at the source rate, then resampled "
      f"({c['resample_method']}) to {c['sampling_rate']:g} Hz.",
      "",
      "## Loading",
      "```python",
      "import xmae_jax",
      "enc = xmae_jax.load_encoder('PATH')        # this directory",
      *loading,
      "```",
      "`embed` resamples, windows (10-s windows averaged per row) and normalizes when `fs` or `L`",
      "differ from the contract, and min-max normalizes contract-shaped rows.",
      "",
      "## Weights without JAX",
      f"`{weights['safetensors']}` holds every tensor (also in `{weights['orbax']}/`, an Orbax "
      "checkpoint).",
      "Names are the dotted attribute paths of the Flax NNX module (`package.json` lists each",
      "name's shape, dtype and kind: `param` or `batch_stat`). Layouts are Flax's: `nnx.Linear`",
      "kernels are (in, out); `nnx.Conv` kernels are (width, in, out) on channels-last (B, L, C)",
      "inputs; `nnx.ConvTranspose` likewise; BatchNorm keeps `scale`, `bias` (params) and `mean`,",
      "`var` (batch statistics, used at inference). A PyTorch user transposes Linear kernels and",
      "moves the conv kernel's width axis last ((out, in, width) = kernel.transpose(2, 1, 0)).",
      "`xmae_jax.interop.torch_encoder.load('PATH')` does all of this: the encoder as a",
      "`torch.nn.Module` with `embed(x, fs)`, without importing JAX.",
      "",
      "## Tensors",
      "| name | shape | kind |",
      "|---|---|---|",
  ]
  for name, t in info["tensors"].items():
    lines.append(f"| `{name}` | {tuple(t['shape'])} | {t['kind']} |")
  return "\n".join(lines) + "\n"
