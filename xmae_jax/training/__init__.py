"""Training: the loop (`train.train`) and what it is made of.

`TrainingError` is the base of the errors that stop a training run (a setting, a checkpoint, a
mesh, a busy workdir, a lost numeric state): each module raises its own subclass where the
problem arises, so `train()`'s callers catch one class and print its one line.
"""

from __future__ import annotations

from xmae_jax import errors


class TrainingError(errors.XmaeError):
  """A setting or a state that stops training; the message is one line for the user."""
