"""The training metrics between two log rows, and the check that they are finite.

A log row averages the steps since the previous one: loss parts, learning rate, step time,
segments/s, TFLOP/s per device and MFU. The window is part of a checkpoint's loop state, so a
resumed run's first row averages the same steps as an uninterrupted run's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xmae_jax import training
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import perf
from xmae_jax.training import state as state_lib


class NonFiniteLossError(training.TrainingError):
  """The loss or the gradient became NaN/Inf."""


def mean_rows(rows: list[dict]) -> dict[str, float]:
  """The mean of each key over `rows`, in float64 of the rows' values: the same mean whether a
  row came from the device (float32) or from a checkpoint's meta (a resumed run's window, as
  JSON floats)."""
  return {k: float(np.mean(np.asarray([r[k] for r in rows], np.float64))) for k in rows[0]}


# Badput that is not the steps' own: left out of the window's step time (data waits stay in).
_NOT_STEP_TIME = ("compile", "eval", "checkpoint", "other")


class MetricWindow:
  """The training metrics since the last log row.

  A step's metrics are fetched while the next step runs (no stall in the common case), unless
  the step needs them at once (`push(..., sync=True)`). A non-finite step raises
  `NonFiniteLossError` naming it and the last good checkpoint.

  Step time is the window's wall time per step, less what `goodput` booked to compilation,
  evaluation, checkpointing and the profiler meanwhile (data waits count: they slow training);
  `segments_per_s` is the global batch over it, TFLOP/s per device and MFU come from the
  compiled step's FLOPs and the device's peak (`perf`).
  """

  def __init__(
      self,
      batch_size: int,
      steps_per_epoch: int,
      workdir: Path,
      goodput: perf.Goodput | None = None,
      peak: perf.Peak | None = None,
  ):
    self.batch_size, self.steps_per_epoch, self.workdir = batch_size, steps_per_epoch, workdir
    self.goodput, self.peak = goodput or perf.Goodput(), peak
    self.pending = None
    self.rows: list[dict] = []
    self.restart_clock()

  def _excluded(self) -> float:
    return sum(self.goodput.seconds[k] for k in _NOT_STEP_TIME)

  def restart_clock(self) -> None:
    self.started, self.excluded_at_start = time.perf_counter(), self._excluded()

  def push(self, step: int, out: dict | None, *, sync: bool, last_saved: int | None) -> None:
    """Takes step `step`'s metrics `out` (None: nothing new, only settle the pending step)."""
    done = [self.pending] if self.pending is not None else []
    self.pending = (step, out) if out is not None else None
    if sync and self.pending is not None:
      done.append(self.pending)
      self.pending = None
    for s, o in done:
      o = state_lib.fetch(o)
      if not o.pop("finite"):
        bad = next((k for k in ("loss", "grad_norm") if not np.isfinite(o[k])), "loss")
        good = f"step {last_saved}" if last_saved is not None else "none (no checkpoint yet)"
        raise NonFiniteLossError(
            f"non-finite {bad} ({o[bad]}) at step {s}: training stopped; last good checkpoint: "
            f"{good} in {self.workdir / ckpt_lib.CHECKPOINT_DIR}"
        )
      self.rows.append(o)

  def settle(self, last_saved: int | None) -> None:
    """Fetches (and checks) the step whose metrics are still on the device."""
    if self.pending is not None:
      step, _ = self.pending
      self.push(step, None, sync=True, last_saved=last_saved)

  def state_dict(self) -> list[dict]:
    """The metrics of the steps since the last log row (settled first): saved in a checkpoint's
    meta, so a resumed run's first row averages the same steps as an uninterrupted run's."""
    return [{k: float(v) for k, v in r.items()} for r in self.rows]

  def load_state_dict(self, rows: list[dict]) -> None:
    self.rows = [dict(r) for r in rows]

  def row(
      self, step: int, mask_ratio: float | None, flops_per_device: float | None = None
  ) -> dict | None:
    """The log row of the steps since the last one (None when there are none); starts anew."""
    if not self.rows:
      return None
    elapsed = time.perf_counter() - self.started - (self._excluded() - self.excluded_at_start)
    step_time = max(elapsed, 1e-9) / len(self.rows)
    mean = mean_rows(self.rows)
    row = {
        "train_loss": mean.pop("loss"),
        "lr": float(self.rows[-1]["lr"]),
        "segments_per_s": self.batch_size / step_time,
        "step_time_s": step_time,
        **perf.throughput(step_time, flops_per_device, self.peak),
        "epoch": step / self.steps_per_epoch,
    }
    row.update({f"train_{k}": v for k, v in mean.items() if k != "lr"})
    if mask_ratio is not None:
      row["mask_ratio"] = mask_ratio
    self.rows = []
    return row
