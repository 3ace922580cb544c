"""Run logs: WORKDIR/metrics.jsonl, TensorBoard events under WORKDIR/tb, optionally Weights &
Biases (`train.wandb.project`), a console progress line.

Only process 0 writes (the writer is a no-op elsewhere). metrics.jsonl holds one JSON object per
logged step (`step`, `train_loss`, `lr`, `segments_per_s`, `step_time_s`, `tflops_per_device`,
`mfu`, `goodput`, `badput_*`, ... and `val_loss` on evaluation steps), flushed line by line so a
preempted run loses nothing it logged. A value that is not known (`mfu` on a device kind without
a known peak) is null in the file and left out of TensorBoard. On resume the lines of steps
after the restored checkpoint are dropped first, so the file reads as one run. In a gs://
workdir metrics.jsonl is rewritten whole at each row (an object cannot be appended to) and the
TensorBoard events are written locally and uploaded to WORKDIR/tb at each flush.

W&B (`pip install xmae-jax[wandb]`, off by default) gets the same scalars at the same steps and
the run's config. No network at run time: the run is offline (files under WORKDIR/wandb, `wandb
sync` uploads them later) unless the user sets WANDB_MODE. The W&B run id is kept in
WORKDIR/wandb_run_id, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

from xmae_jax import atomic
from xmae_jax import config_lib
from xmae_jax import paths
from xmae_jax import training

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
WANDB_ID_FILE = "wandb_run_id"


class TrackingError(training.TrainingError):
  """Experiment tracking asked for but not available (W&B not installed)."""


class WandbRun:
  """The W&B run of a workdir (train.wandb settings): log(step, scalars), finish()."""

  def __init__(self, workdir, settings, config=None):
    try:
      # wandb is an optional extra: its absence is the one line below.
      import wandb
    except ImportError:
      raise TrackingError(
          f"train.wandb.project={settings.project!r} needs Weights & Biases: "
          "pip install xmae-jax[wandb] (or set train.wandb.project='' )"
      ) from None
    workdir = paths.path(workdir)
    id_file = workdir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if not run_id:
      run_id = os.urandom(8).hex()
      atomic.atomic_write(id_file, run_id + "\n")
    options = {
        "project": settings.project,
        "entity": settings.entity or None,
        "name": settings.name or workdir.name,
        "dir": str(workdir),
        "id": run_id,
        "resume": "allow",
        "config": config_lib.config_to_dict(config) if config is not None else None,
    }
    if not os.environ.get("WANDB_MODE"):
      options["mode"] = "offline"  # no network unless the user asks for it
    self.run = wandb.init(**options)

  def log(self, step: int, scalars: dict) -> None:
    self.run.log({k: float(v) for k, v in scalars.items() if v is not None}, step=int(step))

  def finish(self) -> None:
    self.run.finish()


def read_metrics(workdir) -> list[dict]:
  """The logged rows of a run, in order. A last line cut short (the disk filled up while it was
  written) is left out: the step it logged runs again on resume."""
  path = paths.path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  rows = [json.loads(line) for line in lines[:-1]]
  try:
    rows += [json.loads(line) for line in lines[-1:]]
  except json.JSONDecodeError:
    pass
  return rows


def truncate_after(workdir, step: int) -> None:
  """Drops rows logged after `step` (they belong to steps that a resume will run again)."""
  path = paths.path(workdir) / METRICS_FILE
  if not path.is_file():
    return
  kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
  atomic.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))


def _clean(value):
  """JSON has no NaN/Inf: write them as strings so the file stays valid JSON; None is null."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsWriter:
  """JSONL + TensorBoard (+ W&B when `config.train.wandb.project` is set) on process 0; silent
  elsewhere."""

  def __init__(self, workdir, *, active: bool = True, tensorboard: bool = True, config=None):
    self.active = active
    self._file = None
    self._tb = None
    self._wandb = None
    self._tb_remote = None
    if not active:
      return
    settings = (config.get("train") or {}).get("wandb") if config is not None else None
    if settings is not None and settings.get("project"):
      self._wandb = WandbRun(workdir, settings, config)
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / METRICS_FILE
    # An object cannot be appended to: on an object store the file is rewritten whole at each
    # row, and TensorBoard writes into a local folder that `flush` and `close` upload.
    self._file = _ObjectAppender(self.path) if paths.is_remote(workdir) else open(self.path, "a")
    self._tb_remote = workdir / TB_DIR if paths.is_remote(workdir) else None
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it

      tb_dir = paths.staging_dir("xmae-tb-") if self._tb_remote else workdir / TB_DIR
      self._tb = SummaryWriter(str(tb_dir), flush_secs=10)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _clean(v) for k, v in scalars.items()}}
    try:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    except OSError as e:
      e.filename = e.filename or str(self.path)  # a file object's error names no file
      raise
    if self._tb is not None:
      for k, v in scalars.items():
        if v is not None:
          self._tb.add_scalar(k, float(v), int(step))
    if self._wandb is not None:
      self._wandb.log(step, scalars)

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self._tb is not None:
      self._tb.add_text(tag, text, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._upload_tb()

  def _upload_tb(self) -> None:
    if self._tb_remote is not None:
      paths.upload(self._tb.logdir, self._tb_remote)

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      try:
        file.close()
      except OSError:  # its unflushed rest (a full disk): write() already raised that error
        pass
    if self._tb is not None:
      self._tb.close()
      self._upload_tb()
      if self._tb_remote is not None:  # the local staging of a remote workdir's events
        shutil.rmtree(self._tb.logdir, ignore_errors=True)
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


class _ObjectAppender:
  """The append-only text file of an object store: `write` adds to the content, `flush`
  rewrites the object whole (the rows logged before are read first, so a resumed run keeps
  them)."""

  def __init__(self, path):
    self.path = path
    self._text = path.read_text() if path.is_file() else ""

  def write(self, text: str) -> None:
    self._text += text

  def flush(self) -> None:
    atomic.atomic_write(self.path, self._text)

  def close(self) -> None:
    self.flush()


def _hms(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A console progress line with rate and ETA (process 0 only).

  On a terminal the line is redrawn in place; in a log file each update is its own line.
  The ETA uses the rate since the first reported step, so compilation does not distort it.
  """

  def __init__(self, total_steps: int, first_step: int = 0, *, active: bool = True, stream=None):
    self.total = int(total_steps)
    self.active = active
    self.stream = stream or sys.stderr
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._t0 = None
    self._s0 = first_step

  def update(self, step: int, **scalars) -> None:
    if not self.active:
      return
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._s0 = now, step
    done = step - self._s0
    rate = done / (now - self._t0) if done > 0 and now > self._t0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    width = 24
    filled = int(width * step / max(1, self.total))
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}] {step}/{self.total}"]
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()]
    parts.append(f"{rate:.2f} steps/s" if rate else "compiling/warming up")
    parts.append(f"ETA {_hms(eta)}" if math.isfinite(eta) else "ETA --")
    line = "  ".join(parts)
    if self._tty:
      self.stream.write("\r" + line + "\x1b[K")
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line of its own (evaluation results, checkpoints), not overwritten by the bar."""
    if not self.active:
      return
    self.stream.write(("\n" if self._tty else "") + text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.active and self._tty:
      self.stream.write("\n")
      self.stream.flush()
