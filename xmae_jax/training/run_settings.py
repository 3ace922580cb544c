"""A run's settings against the workdir's checkpoints: `check_compatible` refuses a workdir holding
another model or another model configuration, and a resume with other `RUN_SETTINGS` than the
run's (unless allowed by name); `setting_difference` names the first setting in which a saved
config differs from another. Read from the newest checkpoint's meta (`checkpoint.meta_dict`).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from xmae_jax import config_lib
from xmae_jax import paths
from xmae_jax.training import checkpoint

# Settings a resumed training run must keep: they fix the data stream and the learning-rate
# schedule (a changed num_steps jumps the rate back up; "best" would compare validation losses
# of two datasets). `allow_changes` in `check_compatible` names the ones a user changes on purpose.
RUN_SETTINGS = ("data.dir", "train.num_steps", "train.num_epochs", "train.batch_size")


def check_compatible(
    workdir, config, *, resume: bool = False, allow_changes: Sequence[str] = ()
) -> int | None:
  """Latest step of an existing run in `workdir` (None if fresh); a clear error if it is another
  model or another model configuration (restoring it would fail or mislead), and with `resume`
  (the trainer) also if a training checkpoint there ran with other `RUN_SETTINGS` than `config`,
  except those named in `allow_changes`. The check reads the newest checkpoint whose meta is
  readable (resuming skips corrupt ones anyway)."""
  unknown = sorted(set(allow_changes) - set(RUN_SETTINGS))
  if unknown:
    raise checkpoint.CheckpointError(
        f"allowed resume change {unknown[0]!r}: not one of " f"{', '.join(RUN_SETTINGS)}"
    )
  directory = paths.path(workdir) / checkpoint.CHECKPOINT_DIR
  if not directory.is_dir():
    return None
  steps = [s for s in checkpoint.committed_steps(workdir) if (directory / str(s) / "meta").is_dir()]
  if not steps:
    return None
  meta, checked = None, steps[-1]
  for checked in reversed(steps):
    try:
      meta = json.loads((directory / str(checked) / "meta" / "metadata").read_text())
      if isinstance(meta, dict):
        break
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
      pass
    meta = None
  if meta is None:
    return steps[-1]  # nothing to compare with; the resume says no checkpoint is intact
  name = meta.get("model_name")
  if name != config.model.name:
    raise checkpoint.CheckpointError(
        f"workdir {workdir} holds a checkpoint of model {name!r} (step "
        f"{checked}), not {config.model.name!r}: use another --workdir"
    )
  saved = meta.get("config", {})
  other = setting_difference(saved, config, ("model",))
  if other:
    raise checkpoint.CheckpointError(
        f"workdir {workdir} holds a {name} checkpoint with other model settings "
        f"({other[1]}): use another --workdir"
    )
  # An importer's weights-only checkpoint (kind "model") starts the data and schedule anew.
  other = (
      resume
      and meta.get("kind") == "train"
      and setting_difference(saved, config, [k for k in RUN_SETTINGS if k not in allow_changes])
  )
  if other:
    raise checkpoint.CheckpointError(
        f"workdir {workdir} holds a run of other settings ({other[1]}; "
        f"checkpoint step {checked}): resume with the same value, or pass "
        f"--allow_resume_change={other[0]} to change it, or use another "
        "--workdir"
    )
  return steps[-1]


def _lookup(d: dict, key: str):
  for part in key.split("."):
    d = d.get(part) if isinstance(d, dict) else None
  return d


def _same_setting(key: str, there, here) -> bool:
  if there == here:
    return True
  # A directory named by another path (relative from another folder, a symlink) is the same.
  if key.endswith(".dir") and isinstance(there, str) and isinstance(here, str) and there and here:
    try:
      return os.path.samefile(there, here)
    except OSError:
      return False
  return False


def setting_difference(saved: dict, config, keys: Sequence[str]) -> tuple[str, str] | None:
  """(KEY, 'KEY: THERE there, HERE here') for the first setting in which a saved config (a
  dict) differs from `config`, among `keys` (dotted; a section stands for each of its
  settings); None when they agree."""
  wanted = config_lib.config_to_dict(config)
  for key in keys:
    there, here = _lookup(saved, key), _lookup(wanted, key)
    if isinstance(there, dict) or isinstance(here, dict):
      there, here = there or {}, here or {}
      pairs = [(f"{key}.{k}", there.get(k), here.get(k)) for k in sorted(set(there) | set(here))]
    else:
      pairs = [(key, there, here)]
    for k, a, b in pairs:
      if not _same_setting(k, a, b):
        return k, f"{k}: {a!r} there, {b!r} here"
  return None
