"""The one place a config is built, loaded, overridden, checked and saved.

Config files follow big_vision: `configs/<model>.py` defines `get_config(arg)`, where `arg` is
the text after the colon in `configs/xmae.py:tiny,train.lr=1e-4` (a preset name, optionally
followed by `,key=value` pairs). A file states the paper values plainly, then one block of
overrides per preset at its end (`PRESETS = {"demo": {...}, "tiny": {...}}`); the sections every
model shares (`data`, `train`, `mesh`, `seed`) live here, with their own per-preset block
(`COMMON_PRESETS`). Order of application: paper values, common preset, the file's preset, the
`key=value` pairs of the argument, then the command line's `--config.a.b=v` values.

Every tool loads through `load(spec)`: `spec` is `FILE[:PRESET[,key=value...]]`, a config's name
(`xmae`, `m2ae:tiny`: the config file shipped with the package, `packaged_config`) or a directory
holding `config.json` (a training workdir or an exported package). A config read from a file is
validated (`validate`) before anything runs, so a bad setting fails at once with one line; a
saved config is taken as it ran. Problems raise `ConfigError` (an `XmaeError`) with one line
naming the file, preset, key or value.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections as mlc

from xmae_jax import atomic
from xmae_jax import config_rules
from xmae_jax import errors
from xmae_jax import paths

CONFIG_FILE = "config.json"  # a workdir's (and an exported package's) saved config
# 100m, 300m, 1b: model-size presets for scaling studies on TPU slices (about 100M, 300M and 1B
# parameters: wider and deeper paths), compiled ahead with `xmae-compile` (BENCHMARKS.md).
PRESET_NAMES = ("paper", "demo", "tiny", "cpu", "100m", "300m", "1b")
SCALING_PRESETS = ("100m", "300m", "1b")

# Per-preset values of the shared sections (every model trains on the same schedule per preset).
COMMON_PRESETS = {
    # demo: the paper model for a short CPU run (README command 1); tiny: the tests' schedule
    "demo": {
        "train.batch_size": 64,
        "train.num_steps": 150,
        "train.log_every": 10,
        "train.eval_every": 50,
        "train.checkpoint_every": 50,
        "train.figure_every": 50,
    },
    "tiny": {
        "train.batch_size": 8,
        "train.num_steps": 20,
        "train.log_every": 5,
        "train.eval_every": 10,
        "train.eval_batches": 2,
        "train.checkpoint_every": 10,
    },
    # cpu: what a 2-core machine can pretrain on a small real corpus (PhysioNet/CinC 2015,
    # ~12k training windows) in under 30 minutes, with the model files' smaller `cpu` sizes.
    # Steps, not minutes, are the budget, so every model gets the same number of updates on the
    # same batches. Real ICU windows are noisier than PulseDB's: 0.8 quality keeps a third more
    # windows than the reference's 0.9 (6.2k vs 4.7k of 12.4k). The learning rate stays the
    # paper's 3e-4 at batch 64: 1e-3 left xMAE's masked-ECG loss at the window-mean level after
    # 1,000 steps (EVALUATION.md, real-data study), and 3e-4 at batch 64 is the setting under
    # which the simulator run learned beat timing. A 10% warm-up would spend 200 updates; 5% is
    # enough for AdamW at this size.
    "cpu": {
        "train.batch_size": 64,
        "train.num_steps": 2000,
        "train.lr": 3e-4,
        "train.warmup_frac": 0.05,
        "train.log_every": 25,
        "train.eval_every": 200,
        "train.checkpoint_every": 200,
        "train.figure_every": 1000,
        "data.min_quality_ppg": 0.8,
        "data.min_quality_ecg": 0.8,
    },
    # The scaling presets train in bfloat16 (parameters stay float32) with every parameter under
    # the "fsdp" rule: on a mesh with an fsdp axis (`--config.mesh.axes` or xmae-compile's
    # --mesh) parameters and Adam moments are split over it; with fsdp 1 they stay whole.
    **{
        name: {"train.compute_dtype": "bfloat16", "mesh.param_rules": ((".*", "fsdp"),)}
        for name in SCALING_PRESETS
    },
}


class ConfigError(errors.XmaeError):
  """A config file, preset, key or value that cannot be used; one line."""


# --- The shared sections (paper values) -------------------------------------------------------


def _data() -> mlc.ConfigDict:
  d = mlc.ConfigDict()
  d.dir = ""  # a dataset directory written by xmae-prepare (manifest.json)
  d.sampling_rate = 100  # Hz; the reference trains at 100 Hz x 10 s
  d.segment_length = 1000
  d.min_quality_ppg = 0.9  # reference `qual_thre`: applied when reading, not preparing
  d.min_quality_ecg = 0.9
  d.modalities = ("ppg", "ecg")  # records lacking one of these are dropped for paired models
  d.shuffle_seed = 0
  d.with_subject = False  # batches carry `subject` (needed by loss.positives="subject")
  d.num_workers = 0  # Grain worker processes per host (0 = in-process)
  d.read_threads = 1  # ArrayRecord read threads per process
  d.prefetch = 2  # batches prefetched per process
  d.normalize = "minmax"  # per-segment min-max to [-1, 1], as the reference
  d.augment = mlc.ConfigDict()
  # The reference enables these but, through an inverted condition, applies them only to
  # validation/test: it trains without augmentation, and so does every preset here by default.
  # `enabled=True` applies them to training (never to evaluation; the time shift moves both
  # modalities together so the pair stays synchronized). Beware the ECG polarity flip for
  # models that reconstruct ECG from PPG: the PPG cannot tell the sign, so the masked ECG
  # becomes ambiguous and a flat prediction near the baseline is the cheap minimum.
  d.augment.enabled = False
  # amplitude x U(0.8, 1.2) (a no-op under min-max; kept for parity)
  d.augment.scale_prob = 0.5
  d.augment.scale_range = (0.8, 1.2)
  d.augment.shift_prob = 0.5  # otherwise a shift of up to +-6 samples, edge-padded
  d.augment.max_shift = 6
  d.augment.ecg_flip_prob = 0.5  # ECG polarity flip
  return d


def _train() -> mlc.ConfigDict:
  t = mlc.ConfigDict()
  t.batch_size = 512  # global batch
  t.num_steps = 0  # 0: use num_epochs
  t.num_epochs = 37  # reference max_epochs
  t.lr = 3e-4  # AdamW, reference defaults
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 0.01  # on all parameters, as the reference
  t.warmup_frac = 0.1  # linear warm-up over 10% of steps, then cosine to 0
  t.grad_clip_norm = 0.0  # 0 = off (reference does not clip)
  t.grad_accum_steps = 1
  t.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
  # How the train state crosses the jit boundary: "buffers" (parameters, statistics and Adam
  # moments as a few contiguous buffers: 7 leaves, ~0.02 ms of host time per step call),
  # "tree" (nested dicts, one leaf per array: 822 for the paper model), or "auto": buffers on
  # accelerators, where the host's per-leaf cost is a large share of a tens-of-ms step; tree on
  # CPU, where a step takes seconds and the buffers' step was not shown to be free (BENCHMARKS.md).
  t.state_layout = "auto"
  # How a fresh run builds its initial state: "host" (on one host's CPU, then placed: the
  # per-shape compiles are shared by every mesh), "sharded" (one jit with the state's shardings:
  # each device computes only its own shards, for a state too large for one host), or "auto":
  # sharded above training.state.SHARDED_INIT_BYTES. Both give the same values.
  t.init = "auto"
  # Start a fresh run from another run's weights (its best-validation checkpoint, else its
  # latest; or an xmae-import-torch workdir) with a new optimizer and data stream: continued
  # pretraining on other data. "" = from the initializer. The model settings must match.
  t.init_from = ""
  t.log_every = 20
  t.eval_every = 0  # 0: once per epoch
  t.eval_batches = 0  # 0: whole validation split
  t.checkpoint_every = 2000
  t.keep_checkpoints = 3
  t.early_stop_patience = 17  # evaluations without val improvement (reference: epochs)
  t.figure_every = 0  # 0 = every 3 evaluations
  t.device_prefetch = 2  # global batches placed on the devices ahead of the step
  t.profile_steps = ()  # (START, END): jax.profiler trace of steps START+1..END
  # under WORKDIR/profile/ (TensorBoard/XProf); () = off
  # Weights & Biases beside TensorBoard (pip install xmae-jax[wandb]): off while project is "".
  # Offline (files under WORKDIR/wandb, `wandb sync` uploads them) unless WANDB_MODE is set.
  t.wandb = mlc.ConfigDict()
  t.wandb.project = ""
  t.wandb.entity = ""  # "" = the account's default
  t.wandb.name = ""  # "" = the workdir's name
  return t


def _mesh() -> mlc.ConfigDict:
  m = mlc.ConfigDict()
  m.axes = (("data", -1), ("fsdp", 1))  # -1: all remaining devices
  m.batch_axes = ("data", "fsdp")  # the batch is split over both
  # Parameter placement as data: (regex on the '/'-joined parameter path, rule). Rules:
  # "replicate", or "fsdp" (shard the largest dimension divisible by the fsdp axis size).
  m.param_rules = ((".*", "replicate"),)
  return m


def base_config(preset: str = "paper") -> mlc.ConfigDict:
  """The shared sections (`preset`, `seed`, `data`, `train`, `mesh`) of `preset`."""
  _check_preset(preset)
  c = mlc.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.data = _data()
  c.train = _train()
  c.mesh = _mesh()
  return apply_overrides(c, COMMON_PRESETS.get(preset, {}))


def data_config(preset: str = "paper") -> mlc.ConfigDict:
  return base_config(preset).data


SHARED_SECTIONS = {"data": _data, "train": _train, "mesh": _mesh}


def with_defaults(config: mlc.ConfigDict) -> mlc.ConfigDict:
  """`config` with every key of the shared sections that it lacks (a config saved before the
  key existed, or one without a data section) set to its default here, the one place defaults
  live: code reads `config.data.normalize`, never `.get("normalize", "minmax")`. A missing key
  takes the section's own default, not a preset's: a run saved before the key existed ran
  without it, which is what the default keeps."""
  with config.unlocked():
    for name, section in SHARED_SECTIONS.items():
      if name not in config:
        config[name] = section()
      else:
        _fill(config[name], section())
  return config


def _fill(node: mlc.ConfigDict, defaults: mlc.ConfigDict) -> None:
  for key, value in defaults.items():
    if key not in node:
      node[key] = value
    elif isinstance(value, mlc.ConfigDict) and isinstance(node[key], mlc.ConfigDict):
      _fill(node[key], value)


# --- Building a config file's config ----------------------------------------------------------


def _check_preset(preset: str) -> None:
  if preset not in PRESET_NAMES:
    raise ConfigError(f"unknown config preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")


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
      raise ConfigError(f"config argument {part!r}: expected key=value")
  _check_preset(preset)
  return preset, extra


def assemble(
    arg, *, model, masking, loss, presets: Mapping[str, Mapping[str, Any]] | None = None
) -> mlc.ConfigDict:
  """The body of every `get_config(arg)`: the shared sections plus the file's model, masking
  and loss (each a ConfigDict of paper values, or a function of the preset for sections copied
  from another file), then the file's `presets[preset]` and the argument's `key=value` pairs."""
  preset, extra = parse_arg(arg)
  c = base_config(preset)
  for name, section in (("model", model), ("masking", masking), ("loss", loss)):
    c[name] = section(preset) if callable(section) else section
  return apply_overrides(apply_preset(c, preset, presets), extra)


def apply_preset(
    config: mlc.ConfigDict, preset: str, presets: Mapping[str, Mapping[str, Any]] | None
) -> mlc.ConfigDict:
  """`presets[preset]` (a config file's block of changes from the paper values) on `config`."""
  unknown = sorted(set(presets or {}) - set(PRESET_NAMES))
  if unknown:
    raise ConfigError(
        f"PRESETS names unknown preset {unknown[0]!r}; " f"choose from {', '.join(PRESET_NAMES)}"
    )
  return apply_overrides(config, (presets or {}).get(preset, {}))


def model_like(config_file, preset: str, name: str, keys: Sequence[str]) -> mlc.ConfigDict:
  """A model section named `name` that copies `keys` from another config file's model of the
  same preset (the baselines take xMAE's path shapes this way, so they cannot drift from it)."""
  base = load(f"{config_file}:{preset}").model
  m = mlc.ConfigDict()
  m.name = name
  for key in keys:
    m[key] = base[key]
  return m


# --- Overrides --------------------------------------------------------------------------------

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _tupled(x):
  """JSON lists (at any depth) back to the tuples the config files use."""
  if isinstance(x, dict):
    return {k: _tupled(v) for k, v in x.items()}
  return tuple(_tupled(v) for v in x) if isinstance(x, (list, tuple)) else x


def _parse_text(key: str, text: str, old):
  """`text` as a value of `old`'s type (the type the config file gave the key)."""
  try:
    if isinstance(old, bool):
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError
      return text.lower() in _TRUE
    if isinstance(old, (int, float)):
      return type(old)(text)
    if isinstance(old, str):
      return text
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if old is None:
      return text
    raise ConfigError(f"config key {key}: {text!r} is not a {type(old).__name__}") from None
  if isinstance(old, tuple) and not isinstance(value, (list, tuple)):
    raise ConfigError(f"config key {key}: {text!r} is not a tuple")
  return _tupled(value)


def _node(config: mlc.ConfigDict, key: str) -> tuple[mlc.ConfigDict, str]:
  """(the ConfigDict holding dotted `key`, its last part); a typo is one line with ml_collections'
  "did you mean" suggestion."""
  *path, leaf = key.split(".")
  node = config
  for depth, part in enumerate(path + [leaf]):
    if not isinstance(node, mlc.ConfigDict) or part not in node:
      hint = ""
      if isinstance(node, mlc.ConfigDict):
        try:
          node[part]
        except KeyError as e:
          m = re.search(r'Did you mean "([^"]+)"', str(e))
          hint = f" (did you mean {'.'.join(path[:depth] + [m.group(1)])}?)" if m else ""
      raise ConfigError(f"unknown config key {key}{hint}")
    if depth < len(path):
      node = node[part]
  return node, leaf


def apply_overrides(config: mlc.ConfigDict, overrides: Mapping[str, Any]) -> mlc.ConfigDict:
  """Sets dotted keys (`{"train.lr": "1e-4"}`) in `config` and returns it. Text is read as the
  type the key has (bools: true/false/1/0/yes/no; tuples: Python literals); other values
  (presets, JSON) are assigned as they are, lists as tuples. Keys must exist already."""
  for key, value in overrides.items():
    node, leaf = _node(config, key)
    old = node[leaf]
    if isinstance(old, mlc.ConfigDict):
      raise ConfigError(f"config key {key} is a section, not a value")
    if isinstance(value, str) and not isinstance(old, str):
      value = _parse_text(key, value, old)
    elif isinstance(value, list):
      value = _tupled(value)
    try:
      node[leaf] = value
    except TypeError:
      raise ConfigError(f"config key {key}: {value!r} is not a {type(old).__name__}") from None
  return config


def flag_overrides(argv: Sequence[str], name: str = "config") -> tuple[list[str], dict[str, str]]:
  """Splits the command line's `--config.a.b=v`, `--config.a.b v`, `--config.a.b` (true) and
  `--noconfig.a.b` (false) out of `argv`: (the other arguments, {"a.b": "v"})."""
  rest, overrides = [], {}
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    m = re.fullmatch(rf"--(no)?{re.escape(name)}\.([^=]+)(?:=(.*))?", arg, re.S)
    if m is None:
      rest.append(arg)
    elif m.group(1):
      overrides[m.group(2)] = "false"
    elif m.group(3) is not None:
      overrides[m.group(2)] = m.group(3)
    elif i + 1 < len(args) and not args[i + 1].startswith("--"):
      overrides[m.group(2)] = args[i + 1]
      i += 1
    else:
      overrides[m.group(2)] = "true"
    i += 1
  return rest, overrides


# --- Loading ----------------------------------------------------------------------------------


def config_dirs() -> list[Path]:
  """Where named configs live: the installed package's copy (setup.py ships configs/*.py as
  xmae_jax/configs), else the checkout's configs/ beside the package (also an editable install)."""
  package = Path(__file__).resolve().parent
  return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def config_names() -> list[str]:
  """The names `--config NAME` accepts (e.g. xmae, m2ae)."""
  return sorted(
      {f.stem for d in config_dirs() for f in d.glob("*.py") if not f.name.startswith("_")}
  )


def packaged_config(name: str) -> Path | None:
  """The config file of a bare name (`xmae`, or `xmae.py`), or None when it names none."""
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.py)?", name):
    return None
  stem = name.removesuffix(".py")
  return next((d / f"{stem}.py" for d in config_dirs() if (d / f"{stem}.py").is_file()), None)


def resolve_config_file(path: str) -> Path:
  """The file of `--config PATH[:...]`: an existing file, else a shipped config's name."""
  file = Path(path)
  if file.is_file():
    return file
  packaged = packaged_config(path)
  if packaged is not None:
    return packaged
  hint = ""
  if file.suffix == ".py" and packaged_config(file.name) is not None:
    hint = f" (the installed package has it as --config {file.stem})"
  elif not file.suffix:
    hint = f" (known config names: {', '.join(config_names()) or 'none'})"
  raise ConfigError(f"config file {path} does not exist{hint}")


def load(spec, overrides: Mapping[str, Any] | None = None) -> mlc.ConfigDict:
  """The config of `spec`, then `overrides` (dotted keys, e.g. the command line's).

  `spec` is `FILE[:PRESET[,key=value...]]` (that file's `get_config(arg)`, validated; FILE may
  be a shipped config's name, `xmae:tiny`) or a directory with `config.json` (a workdir or
  exported package; its config as it ran, so the same architecture can be rebuilt). Every
  problem is a one-line `ConfigError`.
  """
  if Path(str(spec)).is_dir():
    return apply_overrides(load_saved(spec), overrides or {})
  path, _, arg = str(spec).partition(":")
  file = resolve_config_file(path)
  module_spec = importlib.util.spec_from_file_location(f"_xmae_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config(arg)")
  config = apply_overrides(module.get_config(arg or None), overrides or {})
  validate(config)
  return config


def load_saved(directory) -> mlc.ConfigDict:
  """The config a workdir or exported package saved (DIR/config.json)."""
  file = Path(directory) / CONFIG_FILE
  if not file.is_file():
    raise ConfigError(f"{directory} holds no {CONFIG_FILE} (a workdir or package was expected)")
  try:
    return config_from_dict(json.loads(file.read_text()))
  except ValueError as e:
    raise ConfigError(f"{file}: not a saved config ({e})") from None


def config_to_dict(config) -> dict:
  """A JSON-ready dict of `config` (tuples become lists; `config_from_dict` restores them)."""
  return json.loads(config.to_json_best_effort())


def config_from_dict(d: dict) -> mlc.ConfigDict:
  """The ConfigDict of a saved config (JSON lists back to the tuples the config files use), the
  keys it lacks filled with today's defaults (`with_defaults`)."""
  return with_defaults(mlc.ConfigDict(_tupled(d)))


def write_config(workdir, config) -> Path:
  """WORKDIR/config.json, written atomically; returns its path."""
  return atomic.atomic_write(
      paths.path(workdir) / CONFIG_FILE,
      json.dumps(config_to_dict(config), indent=1, sort_keys=True),
  )


# --- Validation (the rules: config_rules) ---------------------------------------------------------


def validate(config: mlc.ConfigDict) -> mlc.ConfigDict:
  """Raises ConfigError (one line naming the key and value) at the first setting out of range
  (`config_rules.first_problem`); returns `config`."""
  problem = config_rules.first_problem(config)
  if problem:
    raise ConfigError(problem)
  return config
