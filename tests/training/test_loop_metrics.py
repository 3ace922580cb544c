"""The training loop's accelerator-facing pieces, end to end on CPU.

* `train.profile_steps=(1, 3)` (the toy model of tests/helpers: these are the loop's pieces, not
  the model's) leaves a jax.profiler trace under
  WORKDIR/profile/, and every log row carries step time, segments/s, TFLOP/s per device, MFU
  (null for a device kind without a known peak, named once in the log) and goodput shares.
* With device prefetch reading ahead, a run stopped by SIGTERM resumes with exactly the losses
  of an uninterrupted run: the checkpoint holds the state of the next batch the step consumes.
"""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import datasets
from tests.helpers import train_runner
from xmae_jax import config_lib
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import perf
from xmae_jax.training import train as train_lib

REPO = train_runner.REPO
TIMEOUT = 420


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 8, 1.0)


def test_profile_window_writes_a_trace_and_rows_carry_throughput_and_goodput(
    dataset, tmp_path, monkeypatch, capsys
):
  train_runner.register_toy_model()
  config = config_lib.load(REPO / "configs/xmae.py:tiny")
  config_lib.apply_overrides(
      config,
      {
          "data.dir": str(dataset),
          "model.name": "toy_mae",
          "train.num_steps": "4",
          "train.log_every": "1",
          "train.eval_every": "2",
          "train.checkpoint_every": "4",
          "train.figure_every": "1000",
          "train.profile_steps": "(1, 3)",
      },
  )
  kind = "Mystery Accelerator 9000"
  monkeypatch.setattr(perf, "device_peak", lambda device, dtype: perf.Peak(kind, None, "unknown"))
  summary = train_lib.train(config, tmp_path)
  assert summary["status"] == "completed" and summary["step"] == 4

  traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0

  log = capsys.readouterr().err
  assert sum(kind in line for line in log.splitlines()) == 1
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    assert r["step_time_s"] > 0
    assert r["segments_per_s"] == pytest.approx(config.train.batch_size / r["step_time_s"])
    assert r["tflops_per_device"] > 0 and r["mfu"] is None
    shares = {k: v for k, v in r.items() if k == "goodput" or k.startswith("badput_")}
    assert set(shares) == {"goodput", *(f"badput_{p}" for p in perf.GOODPUT_PHASES)}
    assert all(0 <= v <= 1 for v in shares.values()) and sum(shares.values()) == pytest.approx(1)
  assert rows[0]["badput_compile"] > 0 and rows[-1]["badput_eval"] > 0
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_profile_window_past_the_run_fails_at_start_with_one_line(dataset, tmp_path):
  config = config_lib.load(REPO / "configs/xmae.py:tiny")
  config_lib.apply_overrides(
      config,
      {
          "data.dir": str(dataset),
          "train.num_steps": "0",
          "train.num_epochs": "1",
          "train.profile_steps": "(1, 50)",
      },
  )
  with pytest.raises(train_lib.TrainingError, match=r"profile_steps=\(1, 50\): END is past") as e:
    train_lib.train(config, tmp_path)
  assert "\n" not in str(e.value)


def test_progress_line_of_a_validation_step_shows_the_last_training_loss(dataset, tmp_path, capsys):
  """Step 3 validates but does not log (log_every=2): its progress line repeats the loss and
  learning rate of step 2's row instead of nan / 0 placeholders."""
  config = train_runner.toy_config(
      dataset, **{"train.num_steps": 4, "train.log_every": 2, "train.eval_every": 3}
  )
  assert train_lib.train(config, tmp_path)["status"] == "completed"
  lines = {
      line.split()[1]: line
      for line in capsys.readouterr().err.splitlines()
      if line.startswith("[") and "/4" in line
  }
  assert set(lines) == {"2/4", "3/4", "4/4"}
  rows = {r["step"]: r for r in metrics_lib.read_metrics(tmp_path)}
  assert "train_loss" not in rows[3] and "val_loss" in rows[3]
  shown = f"loss {rows[2]['train_loss']:.4g}  lr {rows[2]['lr']:.4g}  "
  assert shown in lines["2/4"] and shown in lines["3/4"], lines
  assert "nan" not in lines["3/4"]


# --- SIGTERM with batches read ahead ---------------------------------------------------------


def _spec(path: Path, data_dir, jobs) -> Path:
  # A long schedule (the learning rate depends on it): jobs stop by SIGTERM or stop_at_step.
  overrides = {
      "data.dir": str(data_dir),
      "model.name": "toy_mae",
      "train.num_steps": 100000,
      "train.log_every": 1,
      "train.eval_every": 100000,
      "train.checkpoint_every": 100000,
      "train.figure_every": 100000,
      "train.device_prefetch": 2,
  }
  path.write_text(
      json.dumps({"config": "configs/xmae.py:tiny", "overrides": overrides, "jobs": jobs})
  )
  return path


def test_sigterm_with_batches_read_ahead_resumes_with_identical_losses(
    dataset, tmp_path, cache_env
):
  first = tmp_path / "first"
  proc = train_runner.start(
      _spec(tmp_path / "first.json", dataset, [{"name": "first", "workdir": str(first)}]),
      1,
      cache_env,
  )
  try:
    deadline = time.monotonic() + TIMEOUT
    while len(metrics_lib.read_metrics(first)) < 3:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no training step logged in time"
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    summary = train_runner.finish(proc, 180)["first"]["summary"]
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert summary["status"] == "preempted"
  saved = summary["step"]
  ckpt = ckpt_lib.Checkpointer(first, read_only=True)
  meta = ckpt.read_meta(ckpt.latest_step())
  ckpt.close()
  assert meta["step"] == saved >= 3
  # The saved stream state is the next batch the step consumes (global batch `saved`), not
  # one of the batches the prefetcher had read ahead.
  assert list(meta["data_iter_state"].values()) == [saved]

  stop = saved + 3
  result = train_runner.finish(
      train_runner.start(
          _spec(
              tmp_path / "second.json",
              dataset,
              [
                  {
                      "name": "resumed",
                      "workdir": str(first),
                      "stop_at_step": stop,
                      "save_params": False,
                  },
                  {
                      "name": "reference",
                      "workdir": str(tmp_path / "reference"),
                      "stop_at_step": stop,
                      "save_params": False,
                  },
              ],
          ),
          1,
          cache_env,
      ),
      TIMEOUT,
  )
  resumed, reference = result["resumed"], result["reference"]
  assert resumed["summary"]["status"] == reference["summary"]["status"] == "stopped"
  steps = list(range(1, stop + 1))
  resumed_steps = [r["step"] for r in resumed["metrics"]]
  assert resumed_steps == [r["step"] for r in reference["metrics"]] == steps
  np.testing.assert_array_equal(
      [r["train_loss"] for r in resumed["metrics"]], [r["train_loss"] for r in reference["metrics"]]
  )
