"""The optimizer: AdamW with the reference's defaults, warm-up then cosine, optional clipping.

Reference (hzhou3/xMAE `utils/helper_trainer.py` at commit 7a0d24e): AdamW lr 3e-4,
betas (0.9, 0.95), weight decay 0.01 on every parameter (norms, biases and positions included),
the learning rate stepped per optimizer step: linear warm-up over the first 10% of the steps from
0, then 0.5 * (1 + cos(pi * progress)) down to 0. The reference does not clip gradients; a global
norm clip is a config choice (`train.grad_clip_norm`, 0 = off). Gradient accumulation happens in
the train step (micro-batches inside one jitted step), not here, so the schedule counts optimizer
updates.
"""

from __future__ import annotations

import optax


def lr_schedule(train_config, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_frac` of the steps, then cosine to 0 at `total_steps`."""
  total = max(1, int(total_steps))
  warmup = int(round(train_config.warmup_frac * total))
  peak = float(train_config.lr)
  if warmup <= 0:
    return optax.cosine_decay_schedule(peak, decay_steps=total, alpha=0.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
  )


def make_optimizer(
    train_config, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW [after a global-norm clip], its schedule). Weight decay applies to all parameters."""
  schedule = lr_schedule(train_config, total_steps)
  adamw = optax.adamw(
      schedule,
      b1=float(train_config.b1),
      b2=float(train_config.b2),
      eps=1e-8,
      weight_decay=float(train_config.weight_decay),
  )
  if train_config.grad_clip_norm and train_config.grad_clip_norm > 0:
    clip = optax.clip_by_global_norm(float(train_config.grad_clip_norm))
    return optax.chain(clip, adamw), schedule
  return adamw, schedule
