"""What a valid config is: a range rule per key (a glob over dotted keys) and the checks across
keys. `config_lib.validate` raises the first problem found here as a ConfigError; the rules
are data, so a new setting gets its range by one line in RULES.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable

import ml_collections as mlc


def _rule(test: Callable[[Any], bool], text: str):
  """(check, message): a finite number (not a bool) for which `test` holds."""
  return (
      lambda v: isinstance(v, (int, float))
      and not isinstance(v, bool)
      and math.isfinite(v)
      and test(v)
  ), text


_POSITIVE = _rule(lambda v: v > 0, "must be > 0")
_NON_NEGATIVE = _rule(lambda v: v >= 0, "must be >= 0")
_AT_LEAST_ONE = _rule(lambda v: v >= 1, "must be >= 1")
_FRACTION = _rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
_OPEN_FRACTION = _rule(lambda v: 0 < v < 1, "must be in (0, 1)")
_PROBABILITY = _rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")
# The step counter lives on the device as an int32: a longer run would overflow it.
MAX_STEPS = 2**31 - 1
_STEP_COUNT = _rule(
    lambda v: 0 <= v <= MAX_STEPS,
    f"must be in [0, {MAX_STEPS}] (the step counter is a 32-bit integer)",
)
# W&B refuses these in project and entity names (and names over 128 characters).
_WANDB_NAME = (
    lambda v: isinstance(v, str) and len(v) <= 128 and not set(v) & set("/\\#?%:"),
    "must be text of at most 128 characters without / \\ # ? % :",
)

# (glob over dotted keys, check): each applies where the key exists (sections differ per model).
# Each is a value that would otherwise train silently wrong (a negative loss weight maximizes
# that loss, lr 0 never moves, a negative interval never fires) or fail deep inside JAX.
RULES = (
    ("train.batch_size", _rule(lambda v: v > 0, "the global batch size must be > 0")),
    ("train.lr", _POSITIVE),
    ("train.warmup_frac", _FRACTION),
    ("train.num_steps", _STEP_COUNT),
    ("train.num_epochs", _STEP_COUNT),
    ("train.*_every", _NON_NEGATIVE),
    ("train.eval_batches", _NON_NEGATIVE),
    ("train.keep_checkpoints", _AT_LEAST_ONE),
    ("train.early_stop_patience", _NON_NEGATIVE),
    ("train.grad_accum_steps", _AT_LEAST_ONE),
    ("train.device_prefetch", _NON_NEGATIVE),
    ("train.grad_clip_norm", _rule(lambda v: v >= 0, "must be >= 0 (0 = off)")),
    ("train.weight_decay", _NON_NEGATIVE),
    ("train.b1", _FRACTION),
    ("train.b2", _FRACTION),
    ("model.dropout*", _FRACTION),
    ("model.seq_len", _POSITIVE),
    ("model.patch_len", _POSITIVE),
    ("model.d_model", _POSITIVE),
    ("model.num_heads", _POSITIVE),
    ("model.latent_dim", _POSITIVE),
    ("model.stem_channels", _POSITIVE),
    ("model.stem_widths.*", _POSITIVE),
    ("model.depth_*", _NON_NEGATIVE),
    ("masking.ratio_*", _FRACTION),
    ("masking.curriculum_levels.*", _OPEN_FRACTION),
    ("masking.curriculum_ema", _FRACTION),
    ("masking.curriculum_rel_improve", _NON_NEGATIVE),
    ("masking.curriculum_min_evals", _NON_NEGATIVE),
    ("masking.curriculum_patience", _AT_LEAST_ONE),
    ("loss.w_*", _NON_NEGATIVE),
    ("loss.temperature", _POSITIVE),
    ("loss.view.noise_std", _NON_NEGATIVE),
    ("loss.view.max_shift", _NON_NEGATIVE),
    ("data.sampling_rate", _POSITIVE),
    ("data.segment_length", _POSITIVE),
    ("data.num_workers", _NON_NEGATIVE),
    ("data.read_threads", _AT_LEAST_ONE),
    ("data.prefetch", _NON_NEGATIVE),
    ("data.augment.*_prob", _PROBABILITY),
    (
        "train.state_layout",
        (lambda v: v in ("auto", "buffers", "tree"), "expected auto, buffers or tree"),
    ),
    ("data.augment.max_shift", _NON_NEGATIVE),
    ("data.augment.scale_range.*", _POSITIVE),
    ("train.wandb.project", _WANDB_NAME),
    ("train.wandb.entity", _WANDB_NAME),
    ("train.wandb.name", (lambda v: isinstance(v, str), "must be text")),
)


def flat(x, prefix: str = "") -> dict[str, Any]:
  """Dotted key -> value of a config (numeric tuples one key per element: `a.b.0`)."""
  if isinstance(x, (mlc.ConfigDict, dict)):
    items = x.items()
  elif isinstance(x, (tuple, list)) and all(isinstance(v, (int, float)) for v in x):
    items = ((str(i), v) for i, v in enumerate(x))
  else:
    return {prefix: x}
  out = {}
  for k, v in items:
    out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def first_problem(config: mlc.ConfigDict) -> str | None:
  """The first setting out of range, as one line naming the key and value; None when there is
  none. Also: a masked-reconstruction loss with weight > 0 needs its modality masked
  (`loss.w_ecg > 0` with `masking.ratio_ecg = 0` has nothing to reconstruct)."""
  values = flat(config)
  for pattern, (ok, text) in RULES:
    for key in fnmatch.filter(values, pattern):
      if not ok(values[key]):
        return f"config {key}={values[key]!r}: {text}"
  for modality in ("ecg", "ppg"):
    ratio, weight = f"masking.ratio_{modality}", f"loss.w_{modality}"
    if ratio in values and values.get(weight, 0) > 0 and values[ratio] == 0:
      return (
          f"config {ratio}=0 with {weight}={values[weight]!r}: nothing of "
          f"{modality.upper()} is masked, so its reconstruction loss is empty"
      )
  problem = _profile_steps_problem(config)
  if problem:
    return problem
  scale = values.get("data.augment.scale_range.0"), values.get("data.augment.scale_range.1")
  if None not in scale and scale[0] > scale[1]:
    return f"config data.augment.scale_range={scale}: low must be <= high"
  return None


def _profile_steps_problem(config: mlc.ConfigDict) -> str | None:
  """`train.profile_steps` is () (off) or (START, END) with 0 <= START < END, and END within
  `train.num_steps` when that fixes the run's length (the trainer checks an epoch-based length)."""
  train = config.get("train") or {}
  window = train.get("profile_steps") or ()
  if not window:
    return None
  text = f"config train.profile_steps={tuple(window)!r}: "
  ints = all(isinstance(v, int) and not isinstance(v, bool) for v in window)
  if len(window) != 2 or not ints or not 0 <= window[0] < window[1]:
    return (
        text + "expected () (off) or (START, END) with 0 <= START < END "
        "(traces steps START+1..END)"
    )
  num_steps = train.get("num_steps") or 0
  if num_steps and window[1] > num_steps:
    return text + f"END is past the run's last step (train.num_steps={num_steps})"
  return None
