"""Runs training jobs in a fresh process (with its own device count) for tests/training.

    PYTHONPATH=REPO python tests/helpers/train_runner.py SPEC.json

    PYTHONPATH=REPO python tests/helpers/train_runner.py cli --config ... --workdir ...
                                                          (xmae-train itself)

SPEC: {"config": "configs/xmae.py:tiny", "overrides": {"train.num_steps": 6, ...},
       "jobs": [{"name": ..., "workdir": ..., "overrides": {...}, "stop_at_step": N|null,
                 "allow_changes": [KEY, ...]}, ...]}
Each job calls `xmae_jax.training.train.train` and reports its summary, the rows of its
metrics.jsonl, and (file) WORKDIR/final_params.npz of process 0's parameters; a TrainingError
is reported as {"error": message}. Under mp_util (several processes) it joins the
jax.distributed job first and emits through mp_util; otherwise it prints one JSON line.
Both modes register the test-only `toy_mae` model (toy_model.py).

The parent side: `start` runs it on a spec in a subprocess with a given device count, `finish`
waits and returns what it reported.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import mp_util

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve()
RESULT_PREFIX = "TRAIN_RUNNER_RESULT "
TOY_MODEL = "tests.helpers.toy_model:ToyMAE"  # models.REGISTRY entry of the toy model


def load_config(spec: str):
  """`config_lib.load` of a spec whose file is relative to the repository root."""
  from xmae_jax import config_lib

  return config_lib.load(REPO / spec)


def toy_config(data_dir, **overrides):
  """The tiny preset on the toy model, 6 steps (log, evaluate and checkpoint every 3 or
  fewer): what in-process trainer tests run."""
  register_toy_model()
  from xmae_jax import config_lib

  config = load_config("configs/xmae.py:tiny")
  return config_lib.apply_overrides(
      config,
      {
          "model.name": "toy_mae",
          "data.dir": str(data_dir),
          "train.num_steps": 6,
          "train.log_every": 1,
          "train.eval_every": 3,
          "train.eval_batches": 1,
          "train.checkpoint_every": 3,
          "train.figure_every": 1000,
          **overrides,
      },
  )


def register_toy_model():
  from xmae_jax import models

  models.REGISTRY.setdefault("toy_mae", TOY_MODEL)


def main(spec_path):
  under_mp = "MP_UTIL_COORDINATOR" in os.environ
  if under_mp:
    mp_util.initialize()
  else:
    from absl import flags

    flags.FLAGS.mark_as_parsed()
  register_toy_model()
  import jax
  import numpy as np

  from xmae_jax import config_lib
  from xmae_jax.training import checkpoint as ckpt_lib
  from xmae_jax.training import metrics as metrics_lib
  from xmae_jax.training import model_checkpoint
  from xmae_jax.training import train as train_lib

  spec = json.loads(Path(spec_path).read_text())
  results = {"devices": jax.device_count(), "processes": jax.process_count()}
  for job in spec["jobs"]:
    config = load_config(spec["config"])
    config_lib.apply_overrides(config, spec.get("overrides", {}))
    config_lib.apply_overrides(config, job.get("overrides", {}))
    out = {}
    try:
      out["summary"] = train_lib.train(
          config,
          job["workdir"],
          stop_at_step=job.get("stop_at_step"),
          allow_changes=job.get("allow_changes", ()),
      )
    except train_lib.TrainingError as e:
      out["error"] = str(e)
      out["error_type"] = type(e).__name__
    out["metrics"] = metrics_lib.read_metrics(job["workdir"])
    if "summary" in out and job.get("save_params", True):
      # every process (Orbax syncs)
      model, _ = model_checkpoint.load_model(job["workdir"], "latest")
      from flax import nnx

      flat = ckpt_lib.flatten(nnx.state(model, nnx.Param))
      if jax.process_index() == 0:
        np.savez(
            Path(job["workdir"]) / "final_params.npz", **{k: np.asarray(v) for k, v in flat.items()}
        )
    results[job["name"]] = out
  if under_mp:
    mp_util.emit(results)
  else:
    print(RESULT_PREFIX + json.dumps(results), flush=True)


def start(spec: Path, devices: int, env: dict) -> subprocess.Popen:
  """This runner on `spec` in a new process with `devices` CPU devices (and `env` added)."""
  path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
  full_env = {
      **os.environ,
      **env,
      "PYTHONPATH": path,
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  return subprocess.Popen(
      [sys.executable, str(RUNNER), str(spec)],
      cwd=REPO,
      env=full_env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )


def finish(proc: subprocess.Popen, timeout: float) -> dict:
  """What a `start`ed runner reported; fails the test if it failed or ran past `timeout`."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"training subprocess timed out; stderr tail:\n{err[-3000:]}")
  lines = [l for l in out.splitlines() if l.startswith(RESULT_PREFIX)]
  assert proc.returncode == 0 and lines, f"runner failed ({proc.returncode}):\n{err[-4000:]}"
  return json.loads(lines[-1][len(RESULT_PREFIX) :])


if __name__ == "__main__":
  if sys.argv[1] == "cli":
    register_toy_model()
    from xmae_jax.cli import xmae_train as cli

    sys.argv = [sys.argv[0]] + sys.argv[2:]
    cli.main()
  else:
    main(sys.argv[1])
