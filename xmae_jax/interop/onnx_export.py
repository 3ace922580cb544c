"""An exported encoder package's embedding as ONNX, through jax2onnx (optional extra `onnx`).

`write_onnx(package_dir)` (or `xmae-export --onnx`) adds `onnx-<inputs>.onnx` beside the
package's files, one per input set as the StableHLO artifact (xmae_jax.interop.stablehlo):
"ppg" (or "ecg"), and for a ppg+ecg package also "ecg" and "ppg+ecg". Inputs are prepared
windows (batch, segment_length) float32 named after their modality, the output (batch, latent)
float32 named "embedding"; the weights are initializers in the graph. Run with onnxruntime:

  sess = onnxruntime.InferenceSession("onnx-ppg.onnx")
  z = sess.run(None, {"ppg": windows})[0]

Checked with jax2onnx 0.13.0 (the newest that installs beside jax 0.10.2) and onnxruntime
1.32.0: the same numbers as `Encoder.embed_prepared` within 1e-5 (tests/interop/test_onnx.py,
skipped when jax2onnx is not installed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax.atomic import atomic_path
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib
from xmae_jax.interop import stablehlo


class OnnxExportError(XmaeError):
  """ONNX export asked for without its extra installed."""


def onnx_file(inputs: str) -> str:
  return f"onnx-{inputs}.onnx"


def write_onnx(package_dir) -> list[Path]:
  """Writes the ONNX model of each input set into the package, and their digests into its
  package.json; returns their paths."""
  try:
    # jax2onnx is an optional extra (onnx): its absence is the one line below.
    import jax2onnx
  except ImportError:
    raise OnnxExportError("ONNX export needs jax2onnx: pip install 'xmae-jax[onnx]'") from None
  logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # per-constant "type not known" lines
  package_dir = Path(package_dir)
  enc = encoder_lib.load_encoder(package_dir)
  names = [onnx_file("+".join(s)) for s in stablehlo.input_sets(enc.modalities)]
  with package_lib.adding_files(package_dir, names):  # their digests join package.json's
    return _write(package_dir, enc, jax2onnx.to_onnx)


def _write(package_dir: Path, enc: encoder_lib.Encoder, to_onnx) -> list[Path]:
  graphdef, state = nnx.split(enc.module)
  state = jax.tree.map(np.asarray, state)
  joint = isinstance(enc.module, encoder_module.JointFingerprint)
  written = []
  for inputs in stablehlo.input_sets(enc.modalities):

    def embed(*windows, inputs=inputs):
      m = nnx.merge(graphdef, state)
      return (m(**dict(zip(inputs, windows))) if joint else m(windows[0])).astype(jnp.float32)

    model = to_onnx(
        embed,
        [("batch", enc.contract.segment_length)] * len(inputs),
        model_name=f"{enc.config.model.name}_{'_'.join(inputs)}",
        input_names=list(inputs),
        output_names=["embedding"],
    )
    path = package_dir / onnx_file("+".join(inputs))
    with atomic_path(path) as tmp:
      tmp.write_bytes(model.SerializeToString())
    written.append(path)
  return written
