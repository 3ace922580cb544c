"""An exported encoder package's embedding as serialized StableHLO (`jax.export`), portable.

`write_artifact(package_dir)` (or `xmae-export --stablehlo`) adds to a package
  stablehlo.json          the input contract: per function its file, inputs (name, shape with
                          a symbolic batch dimension "batch", dtype) and output, the sampling rate,
                          window length and normalization the inputs must have, the platforms
                          it was lowered for
  stablehlo-<inputs>.bin  `jax.export.Exported.serialize()` of prepared windows -> embeddings,
                          one per input set: "ppg" (or "ecg"); a ppg+ecg package also has "ecg"
                          and "ppg+ecg" (the fingerprint from both)

The weights are constants inside each artifact, so running one needs only `jax` (any version
that reads the serialization version it was written with), none of xmae-jax or Flax:

  exp = jax.export.deserialize(open("stablehlo-ppg.bin", "rb").read())
  z = exp.call(windows)          # windows: (B, 1000) float32, min-max normalized per row

Inputs are the prepared windows of the contract (its rate and length, min-max to [-1, 1] per
window), as `Encoder.embed_prepared` takes; the preprocessing of raw signals is not part of the
artifact (NeuroKit2 cleaning and resampling are host code).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmae_jax.atomic import atomic_write
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib

CONTRACT_FILE = "stablehlo.json"
FORMAT_NAME = "xmae-jax-stablehlo"
FORMAT_VERSION = 1
# Lowered for both, so one file runs on a CPU-only or a CUDA jaxlib.
PLATFORMS = ("cpu", "cuda")


class StableHLOError(XmaeError):
  """An artifact that cannot be written or read."""


def artifact_file(inputs: str) -> str:
  return f"stablehlo-{inputs}.bin"


def input_sets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
  """Each modality alone, then all of them together when there are several."""
  sets = [(m,) for m in modalities]
  return sets + [tuple(modalities)] if len(modalities) > 1 else sets


def export_embedding(
    enc: encoder_lib.Encoder, inputs: tuple[str, ...], platforms=PLATFORMS
) -> jax.export.Exported:
  """The `jax.export` of `enc`'s prepared windows {m: (batch, L)} -> (batch, latent) float32,
  positional inputs in the order of `inputs`, with the weights as constants."""
  graphdef, state = nnx.split(enc.module)
  state = jax.tree.map(np.asarray, state)  # host constants, whatever device they were on
  joint = isinstance(enc.module, encoder_module.JointFingerprint)

  def embed(*windows):
    m = nnx.merge(graphdef, state)
    given = dict(zip(inputs, windows))
    z = m(**given) if joint else m(windows[0])
    return z.astype(jnp.float32)

  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, enc.contract.segment_length), jnp.float32)
  return jax.export.export(jax.jit(embed), platforms=tuple(platforms))(*[spec] * len(inputs))


def write_artifact(package_dir, *, platforms=PLATFORMS) -> Path:
  """Adds the StableHLO artifacts and stablehlo.json to an exported package, and their digests to
  its package.json; returns the contract file's path. The .bin files are written first and the
  contract last, each atomically, so a contract file always names complete artifacts."""
  package_dir = Path(package_dir)
  enc = encoder_lib.load_encoder(package_dir)
  names = [artifact_file("+".join(s)) for s in input_sets(enc.modalities)] + [CONTRACT_FILE]
  with package_lib.adding_files(package_dir, names):  # their digests join package.json's
    return _write(package_dir, enc, platforms)


def _write(package_dir: Path, enc: encoder_lib.Encoder, platforms) -> Path:
  c = enc.contract
  functions = {}
  for inputs in input_sets(enc.modalities):
    name = "+".join(inputs)
    exported = export_embedding(enc, inputs, platforms)
    atomic_write(package_dir / artifact_file(name), bytes(exported.serialize()))
    functions[name] = {
        "file": artifact_file(name),
        "inputs": [
            {"name": m, "shape": ["batch", c.segment_length], "dtype": "float32"} for m in inputs
        ],
        "output": {"shape": ["batch", enc.latent_dim], "dtype": "float32"},
    }
  contract = {
      "format": FORMAT_NAME,
      "format_version": FORMAT_VERSION,
      "model_name": enc.info.get("model_name", str(enc.config.model.name)),
      "modality": enc.modality,
      "sampling_rate": c.sampling_rate,
      "segment_length": c.segment_length,
      "segment_seconds": c.segment_seconds,
      "dtype": "float32",
      "normalization": "per-window min-max over time to [-1, 1] (a constant window -> 0)",
      "preprocessing": c.as_dict(),
      "latent_dim": enc.latent_dim,
      "platforms": list(platforms),
      "jax_version": jax.__version__,
      "serialization_version": int(exported.calling_convention_version),
      "functions": functions,
      "run": "jax.export.deserialize(open(file, 'rb').read()).call(*windows)",
  }
  path = package_dir / CONTRACT_FILE
  atomic_write(path, json.dumps(contract, indent=1))
  return path


def read_contract(package_dir) -> dict:
  path = Path(package_dir) / CONTRACT_FILE
  if not path.is_file():
    raise StableHLOError(
        f"{package_dir} has no {CONTRACT_FILE} (write it with "
        "xmae-export --stablehlo, or interop.stablehlo.write_artifact)"
    )
  try:
    contract = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StableHLOError(f"{path} is not valid JSON ({e})") from None
  if contract.get("format") != FORMAT_NAME:
    raise StableHLOError(f"{path} is not an xmae-jax StableHLO contract")
  return contract


def load_artifact(package_dir, inputs: str | None = None):
  """The deserialized `jax.export.Exported` of one input set (default: the first listed, i.e.
  the package's one modality); `.call(*windows)` runs it. In a package, its files are checked
  against the digests package.json records first (one PackageError line for a changed one)."""
  contract = read_contract(package_dir)
  if package_lib.is_package(package_dir):
    package_lib.verify_files(package_dir, package_lib.read_package_info(package_dir))
  name = inputs or next(iter(contract["functions"]))
  if name not in contract["functions"]:
    raise StableHLOError(
        f"{package_dir}: no StableHLO function for inputs {name!r} (has "
        f"{', '.join(contract['functions'])})"
    )
  data = (Path(package_dir) / contract["functions"][name]["file"]).read_bytes()
  return jax.export.deserialize(bytearray(data))


__all__ = [
    "write_artifact",
    "load_artifact",
    "read_contract",
    "export_embedding",
    "StableHLOError",
    "CONTRACT_FILE",
]
