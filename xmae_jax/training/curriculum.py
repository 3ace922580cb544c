"""The mask-ratio curriculum: which ECG mask ratio the next training steps use.

`LadderCurriculum` moves the ECG ratio 0.80 -> 0.85 -> 0.90 on the smoothed validation loss.
It lives with training because it is driven by validation results and its state is part of a
run's checkpoint meta; the models only take the ratio it chooses (`loss(..., mask_ratio=)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from xmae_jax import training


class CurriculumError(training.TrainingError):
  """A stored curriculum state that does not fit the configured levels."""


@dataclasses.dataclass
class LadderCurriculum:
  """Loss-driven ladder over mask ratios, as the reference's declared (never wired) state implies.

  The reference declares: levels [0.80, 0.85, 0.90] (min 0.8, max 0.9, step 0.05), an EMA of
  the validation masked-ECG loss with beta 0.8, an absolute start threshold 0.09, promotion on a
  >= 10% relative EMA improvement since the level was entered, patience 1 (consecutive passing
  evaluations), and at least 3 evaluations (`epochs_per_level`) per level. It never increments
  its level; this class is the rule those fields describe:

  * every evaluation: ema = x (first) or beta * ema + (1 - beta) * x;
  * until the EMA first falls below `start_below`, stay on level 0 ("not started");
  * the evaluation where it does starts level 0: entry_ema = ema, one evaluation at the level;
  * later evaluations count toward the level; an evaluation passes when
    ema <= (1 - rel_improve) * entry_ema; after `patience` consecutive passes and
    `min_evals` evaluations at the level, move up (entry_ema = ema, counters reset);
  * the last level is kept.

  `ratio` is the current level; `update(val_loss)` returns the ratio to use next. The state is a
  small JSON-able dict (`state_dict` / `load_state_dict`) to store in checkpoints. Each level is
  a different static kept count, so the step function recompiles once per level.
  """

  levels: Sequence[float] = (0.8, 0.85, 0.9)
  beta: float = 0.8
  start_below: float = 0.09
  rel_improve: float = 0.10
  patience: int = 1
  min_evals: int = 3
  level: int = 0
  ema: float | None = None
  entry_ema: float | None = None
  evals_at_level: int = 0
  streak: int = 0
  started: bool = False

  @classmethod
  def from_config(cls, masking_config) -> "LadderCurriculum":
    return cls(
        levels=tuple(masking_config.curriculum_levels),
        beta=masking_config.curriculum_ema,
        start_below=masking_config.curriculum_start_below,
        rel_improve=masking_config.curriculum_rel_improve,
        patience=masking_config.get("curriculum_patience", 1),
        min_evals=masking_config.curriculum_min_evals,
    )

  @property
  def ratio(self) -> float:
    return float(self.levels[self.level])

  def update(self, val_loss: float) -> float:
    x = float(val_loss)
    self.ema = x if self.ema is None else self.beta * self.ema + (1.0 - self.beta) * x
    if not self.started:
      if self.ema < self.start_below:
        self.started, self.entry_ema, self.evals_at_level = True, self.ema, 1
      return self.ratio
    self.evals_at_level += 1
    passed = self.ema <= (1.0 - self.rel_improve) * self.entry_ema
    self.streak = self.streak + 1 if passed else 0
    if (
        self.streak >= self.patience
        and self.evals_at_level >= self.min_evals
        and self.level < len(self.levels) - 1
    ):
      self.level += 1
      self.entry_ema, self.evals_at_level, self.streak = self.ema, 0, 0
    return self.ratio

  _STATE_KEYS = ("level", "ema", "entry_ema", "evals_at_level", "streak", "started")

  def state_dict(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in self._STATE_KEYS}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    missing = [k for k in self._STATE_KEYS if k not in state]
    if missing:
      raise CurriculumError(f"curriculum state lacks {', '.join(missing)}")
    for k in self._STATE_KEYS:
      setattr(self, k, state[k])
    if not 0 <= self.level < len(self.levels):
      raise CurriculumError(
          f"curriculum level {self.level} is outside the {len(self.levels)} levels"
      )
