"""What the validations of a run have decided so far: the best step, early stopping and the
curriculum's mask ratio.

`ValidationHistory.state_dict()` is the loop state stored in each checkpoint's meta (`loop`), so
a resumed run continues the same early-stopping count and curriculum level.
"""

from __future__ import annotations

from xmae_jax.training import curriculum as curriculum_lib


class ValidationHistory:
  """The best and last validation loss, the evaluations since the best one (early stopping
  after `patience` of them) and the curriculum the losses drive."""

  def __init__(self, patience: int, curriculum: curriculum_lib.LadderCurriculum | None = None):
    self.patience = int(patience)
    self.curriculum = curriculum
    self.best_val_loss: float | None = None
    self.best_step: int | None = None
    self.evals_since_best = 0
    self.last_val_loss: float | None = None

  @classmethod
  def from_config(cls, config) -> "ValidationHistory":
    masking_config = config.get("masking") or {}
    curriculum = (
        curriculum_lib.LadderCurriculum.from_config(masking_config)
        if masking_config.get("curriculum")
        else None
    )
    return cls(config.train.early_stop_patience, curriculum)

  @property
  def mask_ratio(self) -> float | None:
    """The curriculum's ratio, or None for the model's own (masking.ratio_ecg)."""
    return self.curriculum.ratio if self.curriculum is not None else None

  def record(self, step: int, val_loss: float) -> list[str]:
    """Takes the validation loss of `step`; returns the messages for the log."""
    messages = []
    self.last_val_loss = val_loss
    improved = self.best_val_loss is None or val_loss < self.best_val_loss
    if improved:
      self.best_val_loss, self.best_step, self.evals_since_best = val_loss, step, 0
    else:
      self.evals_since_best += 1
    if self.curriculum is not None:
      before = self.curriculum.ratio
      self.curriculum.update(val_loss)
      if self.curriculum.ratio != before:
        messages.append(f"step {step}: mask ratio {before:g} -> {self.curriculum.ratio:g}")
        self.evals_since_best = 0
    messages.append(
        f"step {step}: val_loss {val_loss:.5f}"
        + (" (best)" if improved else f" (best {self.best_val_loss:.5f} at step {self.best_step})")
    )
    return messages

  def should_stop(self) -> bool:
    return self.evals_since_best > self.patience

  def state_dict(self) -> dict:
    return {
        "best_val_loss": self.best_val_loss,
        "best_step": self.best_step,
        "evals_since_best": self.evals_since_best,
        "last_val_loss": self.last_val_loss,
        # The curriculum's state once it has seen a validation (before, the fresh one).
        "curriculum": (
            self.curriculum.state_dict()
            if self.curriculum is not None and self.last_val_loss is not None
            else None
        ),
    }

  def load_state_dict(self, loop: dict) -> None:
    self.best_val_loss, self.best_step = loop["best_val_loss"], loop["best_step"]
    self.evals_since_best, self.last_val_loss = loop["evals_since_best"], loop["last_val_loss"]
    if self.curriculum is not None and loop.get("curriculum"):
      self.curriculum.load_state_dict(loop["curriculum"])
