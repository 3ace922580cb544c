"""Reading the golden files of the parity tests (tests/golden; written by
tests/golden/make_reference_golden.py): the packed reference state dicts and the config each
file was made with."""

import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "golden" / "fixtures"


def _load_config_module():
  """configs/xmae.py as a module (its get_config, not config_lib's presets and validation)."""
  spec = importlib.util.spec_from_file_location("_cfg_xmae_golden", REPO / "configs" / "xmae.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIGS = _load_config_module()


def unpack(z, prefix: str) -> dict:
  """The state dict under `prefix` of a loaded golden npz (the inverse of the maker's `pack`)."""
  flat, out, i = z[f"{prefix}/flat"], {}, 0
  for name, shape, dtype in json.loads(str(z[f"{prefix}/index"])):
    n = int(np.prod(shape))
    out[name] = flat[i : i + n].reshape(shape).astype(dtype)
    i += n
  return out


def config_for(meta: dict):
  c = CONFIGS.get_config("paper" if meta["preset"] == "paper" else "tiny")
  m = c.model
  m.seq_len, m.patch_len, m.d_model = meta["seq_len"], meta["patch_len"], meta["d_model"]
  m.num_heads, m.depth_ppg, m.depth_ecg = meta["nhead"], meta["depth_ppg"], meta["depth_ecg"]
  m.depth_bridge, m.stem_channels = meta["depth_bridge"], meta["stem_ch"]
  m.stem_widths, m.latent_dim = tuple(meta["widths"]), meta["proj_dim"]
  m.dropout, m.use_cross_bridge = meta["dropout"], meta["use_cross_bridge"]
  return c
