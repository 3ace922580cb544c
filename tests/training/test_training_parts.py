"""Unit tests of the trainer's parts: mesh sizes, placement rules, schedule, logs, figures,
the errors of the multi-process setup."""

import importlib
import json
import math
import subprocess
import sys

import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xmae_jax import config_lib
from xmae_jax import training
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import distributed
from xmae_jax.training import figures
from xmae_jax.training import job
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import optim
from xmae_jax.training import sharding
from xmae_jax.training import train as train_lib


def test_mesh_shape_fills_the_free_axis_and_rejects_misfits():
  assert sharding.mesh_shape((("data", -1), ("fsdp", 2)), 8) == (("data", "fsdp"), (4, 2))
  assert sharding.mesh_shape((("data", -1), ("fsdp", 1)), 1) == (("data", "fsdp"), (1, 1))
  with pytest.raises(sharding.ShardingError, match="do not divide"):
    sharding.mesh_shape((("data", -1), ("fsdp", 3)), 8)
  with pytest.raises(sharding.ShardingError, match="at most one"):
    sharding.mesh_shape((("data", -1), ("fsdp", -1)), 8)
  with pytest.raises(sharding.ShardingError, match="need 4 devices"):
    sharding.mesh_shape((("data", 2), ("fsdp", 2)), 1)


class _FakeMesh:
  axis_names = ("data", "fsdp")
  shape = {"data": 2, "fsdp": 4}


def test_fsdp_rule_shards_the_largest_divisible_dimension_and_rules_match_in_order():
  rules = (("bias", "replicate"), ("kernel", "fsdp"))
  mesh = _FakeMesh()
  assert sharding.spec_for("enc/dense/kernel", (6, 12), rules, mesh) == P(None, "fsdp")
  assert sharding.spec_for("enc/dense/kernel", (16, 6), rules, mesh) == P("fsdp", None)
  assert sharding.spec_for("enc/dense/kernel", (3, 5), rules, mesh) == P()  # none divisible
  assert sharding.spec_for("enc/dense/bias", (16,), rules, mesh) == P()  # first match
  assert sharding.spec_for("enc/norm/scale", (16,), rules, mesh) == P()  # no match
  with pytest.raises(sharding.ShardingError, match="unknown sharding rule"):
    sharding.spec_for("x", (4,), (("x", "tensor"),), mesh)


def test_schedule_warms_up_over_ten_percent_then_cosine_to_zero():
  t = mlc.ConfigDict(
      {
          "lr": 3e-4,
          "warmup_frac": 0.1,
          "b1": 0.9,
          "b2": 0.95,
          "weight_decay": 0.01,
          "grad_clip_norm": 0.0,
      }
  )
  schedule = optim.lr_schedule(t, 1000)
  assert float(schedule(0)) == 0.0
  assert math.isclose(float(schedule(50)), 1.5e-4, rel_tol=1e-5)
  assert math.isclose(float(schedule(100)), 3e-4, rel_tol=1e-5)
  progress = (550 - 100) / 900
  assert math.isclose(
      float(schedule(550)), 3e-4 * 0.5 * (1 + math.cos(math.pi * progress)), rel_tol=1e-4
  )
  assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-12)


def test_metrics_rows_are_json_and_truncation_drops_later_steps(tmp_path):
  w = metrics_lib.MetricsWriter(tmp_path, tensorboard=False)
  for step in (1, 2, 3):
    w.write(step, {"train_loss": 1.0 / step, "lr": 1e-3})
  w.write(4, {"train_loss": float("nan")})
  w.close()
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[3]["train_loss"] == "nan"
  metrics_lib.truncate_after(tmp_path, 2)
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [1, 2]


def test_config_round_trips_through_json_with_tuples():
  c = mlc.ConfigDict(
      {"model": {"name": "xmae", "widths": (8, 16)}, "mesh": {"axes": (("data", -1), ("fsdp", 1))}}
  )
  back = config_lib.config_from_dict(json.loads(json.dumps(config_lib.config_to_dict(c))))
  assert back.model.widths == (8, 16) and back.mesh.axes == (("data", -1), ("fsdp", 1))


def test_flatten_unflatten_round_trip_with_nnx_names():
  # Model states hold no PRNG keys (training.state.split_model refuses them): arrays only.
  from flax import nnx

  tree = {"a": {"w": np.arange(6.0).reshape(2, 3)}, "n": np.int32(3)}
  flat = ckpt_lib.flatten(tree)
  assert set(flat) == {"a.w", "n"}
  back = ckpt_lib.unflatten(tree, flat)
  assert np.array_equal(back["a"]["w"], tree["a"]["w"]) and int(back["n"]) == 3
  lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  pure = nnx.to_pure_dict(nnx.state(lin))
  assert set(ckpt_lib.flatten(nnx.state(lin))) == set(ckpt_lib.flatten(pure))
  with pytest.raises(ckpt_lib.CheckpointError, match="lacks"):
    ckpt_lib.unflatten(tree, {"a.w": flat["a.w"]})


def test_reconstruction_figure_is_written(tmp_path):
  t = np.linspace(0, 10, 1000)
  ecg = np.sin(2 * np.pi * t)[None].repeat(2, 0)
  masked = np.zeros_like(ecg, bool)
  masked[:, 200:1000] = True
  path = figures.plot_reconstructions(tmp_path / "f.png", ecg, 0.9 * ecg, masked, ecg)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert figures.masked_runs(masked[0]) == [(200, 1000)]


def test_partial_multi_process_flags_are_one_line():
  with pytest.raises(distributed.DistributedError, match="go together") as e:
    distributed.initialize("localhost:1234", None, 0)
  assert isinstance(e.value, training.TrainingError) and "\n" not in str(e.value)


def test_a_jax_without_the_runtime_client_fails_with_one_line_naming_it(monkeypatch):
  runtime = importlib.import_module("jax._src.distributed")
  monkeypatch.delattr(runtime, "global_state")
  with pytest.raises(
      distributed.DistributedError,
      match=r"^jax \S+ has no jax\._src\.distributed\.global_state\.client",
  ) as e:
    distributed.runtime_client()
  assert "\n" not in str(e.value)


def test_errors_of_the_trainers_parts_are_training_errors():
  """train()'s callers catch one class; each part raises its own where the problem arises."""
  from xmae_jax.training import workdir_lock

  for error in (
      sharding.ShardingError,
      ckpt_lib.CheckpointError,
      workdir_lock.WorkdirBusyError,
      distributed.DistributedError,
  ):
    assert issubclass(error, training.TrainingError), error


def test_a_training_job_loads_without_jax_and_ends_with_the_signals_exit_status(monkeypatch):
  """xmae-train's process around train() (training.job): importing it (and the CLI) loads no
  JAX, so an install check can fail first; a run stopped by a signal exits 128 + its number."""
  code = "import sys; import xmae_jax.cli.xmae_train; print('jax' in sys.modules)"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert proc.stdout.strip() == "False", proc.stderr
  summary = {
      "status": "preempted",
      "signal": "SIGTERM",
      "step": 5,
      "total_steps": 9,
      "best_val_loss": None,
      "best_step": None,
      "workdir": "runs/x",
  }
  seen = {}

  def fake_train(config, workdir, *, allow_changes=()):
    seen.update(config=config, workdir=workdir, allow_changes=allow_changes)
    return summary

  monkeypatch.setattr(train_lib, "train", fake_train)
  status, line = job.run(
      "CONFIG", "runs/x", allow_changes=["train.num_steps"], keep_freed_host_memory=False
  )
  assert (status, line) == (143, "xmae-train: preempted at step 5/9; workdir runs/x")
  assert seen == {"config": "CONFIG", "workdir": "runs/x", "allow_changes": ("train.num_steps",)}
  assert job.exit_status({**summary, "signal": "SIGINT"}) == 130
  assert job.exit_status({**summary, "status": "completed", "signal": None}) == 0
