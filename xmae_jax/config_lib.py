"""Shared pieces of the `configs/*.py` files: argument parsing and the common sections.

Config files follow big_vision: `get_config(arg)` where `arg` is the text after the colon in
`--config configs/xmae.py:tiny` (a preset name, optionally followed by `,key=value` pairs).
Everything a user may change lives in the returned ConfigDict; the reference's value is the
default and a comment says where it comes from.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections as mlc

PRESETS = ("paper", "demo", "tiny")


def parse_arg(arg: str | None, default_preset: str = "paper") -> tuple[str, dict[str, str]]:
  """`"tiny,seed=3"` -> ("tiny", {"seed": "3"}). Unknown presets fail with one clear line."""
  preset, extra = default_preset, {}
  for i, part in enumerate(p for p in (arg or "").split(",") if p):
    if "=" in part:
      k, v = part.split("=", 1)
      extra[k.strip()] = v.strip()
    elif i == 0:
      preset = part.strip()
    else:
      raise ValueError(f"config argument {part!r}: expected key=value")
  if preset not in PRESETS:
    raise ValueError(f"unknown config preset {preset!r}; choose one of {', '.join(PRESETS)}")
  return preset, extra


def data_config(preset: str) -> mlc.ConfigDict:
  d = mlc.ConfigDict()
  d.dir = ""                        # a dataset directory written by xmae-prepare (manifest.json)
  d.sampling_rate = 100             # Hz; the reference trains at 100 Hz x 10 s
  d.segment_length = 1000
  d.min_quality_ppg = 0.9           # reference `qual_thre`: applied when reading, not preparing
  d.min_quality_ecg = 0.9
  d.modalities = ("ppg", "ecg")     # records lacking one of these are dropped for paired models
  d.shuffle_seed = 0
  d.with_subject = False            # batches carry `subject` (needed by loss.positives="subject")
  d.num_workers = 0                 # Grain worker processes per host (0 = in-process)
  d.read_threads = 1                # ArrayRecord read threads per process
  d.prefetch = 2                    # batches prefetched per process
  d.normalize = "minmax"            # per-segment min-max to [-1, 1], as the reference
  d.augment = mlc.ConfigDict()
  # The reference enables these but, through an inverted condition, applies them only to
  # validation/test: it trains without augmentation, and so does every preset here by default.
  # `enabled=True` applies them to training (never to evaluation; the time shift moves both
  # modalities together so the pair stays synchronized). Beware the ECG polarity flip for
  # models that reconstruct ECG from PPG: the PPG cannot tell the sign, so the masked ECG
  # becomes ambiguous and a flat prediction near the baseline is the cheap minimum.
  d.augment.enabled = False
  d.augment.scale_prob = 0.5        # amplitude x U(0.8, 1.2) (a no-op under min-max; kept for parity)
  d.augment.scale_range = (0.8, 1.2)
  d.augment.shift_prob = 0.5        # otherwise a shift of up to +-6 samples, edge-padded
  d.augment.max_shift = 6
  d.augment.ecg_flip_prob = 0.5     # ECG polarity flip
  return d


def train_config(preset: str) -> mlc.ConfigDict:
  t = mlc.ConfigDict()
  t.batch_size = {"paper": 512, "demo": 64, "tiny": 8}[preset]   # global batch
  # demo: ~3 min of the paper model on 2 CPU cores; its loss levels off by ~100 steps
  t.num_steps = {"paper": 0, "demo": 150, "tiny": 20}[preset]    # 0: use num_epochs
  t.num_epochs = 37                  # reference max_epochs
  t.lr = 3e-4                        # AdamW, reference defaults
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 0.01              # on all parameters, as the reference
  t.warmup_frac = 0.1                # linear warm-up over 10% of steps, then cosine to 0
  t.grad_clip_norm = 0.0             # 0 = off (reference does not clip)
  t.grad_accum_steps = 1
  t.compute_dtype = "float32"        # or "bfloat16" (parameters stay float32)
  t.log_every = {"paper": 20, "demo": 10, "tiny": 5}[preset]
  t.eval_every = {"paper": 0, "demo": 50, "tiny": 10}[preset]   # 0: once per epoch
  t.eval_batches = {"paper": 0, "demo": 0, "tiny": 2}[preset]   # 0: whole validation split
  t.checkpoint_every = {"paper": 2000, "demo": 50, "tiny": 10}[preset]
  t.keep_checkpoints = 3
  t.early_stop_patience = 17         # evaluations without val improvement (reference: epochs)
  t.figure_every = {"paper": 0, "demo": 50, "tiny": 0}[preset]  # 0 = every 3 evaluations
  return t


def mesh_config() -> mlc.ConfigDict:
  m = mlc.ConfigDict()
  m.axes = (("data", -1), ("fsdp", 1))   # -1: all remaining devices
  m.batch_axes = ("data", "fsdp")        # the batch is split over both
  # Parameter placement as data: (regex on the '/'-joined parameter path, rule). Rules:
  # "replicate", or "fsdp" (shard the largest dimension divisible by the fsdp axis size).
  m.param_rules = ((".*", "replicate"),)
  return m


def base_config(preset: str) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.data = data_config(preset)
  c.train = train_config(preset)
  c.mesh = mesh_config()
  return c


def assemble(arg, *, model, masking, loss, default_preset: str = "paper") -> mlc.ConfigDict:
  """The body of every `get_config(arg)`: common sections + the file's model/masking/loss."""
  preset, extra = parse_arg(arg, default_preset)
  c = base_config(preset)
  c.model = model(preset)
  c.masking = masking()
  c.loss = loss()
  return apply_overrides(c, extra)


def apply_overrides(c: mlc.ConfigDict, extra: dict[str, str]) -> mlc.ConfigDict:
  """Applies `key=value` pairs from the config argument (dotted keys allowed)."""
  for key, text in extra.items():
    *path, leaf = key.split(".")
    parent = c
    for part in path:
      parent = parent[part]
    old = parent[leaf]
    parent[leaf] = type(old)(text) if not isinstance(old, bool) else text.lower() in ("1", "true", "yes")
  return c


class ConfigFileError(ValueError):
  pass


def model_like(config_file, preset: str, name: str, keys) -> mlc.ConfigDict:
  """A model section named `name` that copies `keys` from another config file's model (the
  baselines take xMAE's path shapes this way, so they cannot drift from it)."""
  base = load_config_file(f"{config_file}:{preset}").model
  m = mlc.ConfigDict()
  m.name = name
  for key in keys:
    m[key] = base[key]
  return m


def load_config_file(spec: str) -> mlc.ConfigDict:
  """`configs/xmae.py[:preset,key=value]` -> that file's `get_config(arg)` (the one loader that
  command-line tools and tests share; the trainer's absl flag uses config_flags instead)."""
  path, _, arg = str(spec).partition(":")
  file = Path(path)
  if not file.is_file():
    raise ConfigFileError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_xmae_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigFileError(f"config file {path} has no get_config(arg)")
  return module.get_config(arg or None)
