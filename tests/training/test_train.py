"""End-to-end tests of the trainer on CPU (tiny preset, a few steps, a small synthetic dataset).

One device, 8 fake devices and 2 processes x 2 fake devices train the same global batches and
must give the same losses and parameters, with replicated and with FSDP parameters; a run
stopped at step 3 and resumed equals the uninterrupted run; a NaN stops the run naming the step
and keeps the last good checkpoint; SIGTERM leaves a checkpoint that restores; bad settings fail
at start with one line. The runs happen in subprocesses (each its own device count), all
started at once by one module fixture; a shared persistent compilation cache keeps recompiles
down. xMAE (tiny) is trained on one device; the topology matrix uses the test-only `toy_mae`
(tests/helpers/toy_model.py: same contract, far quicker to compile).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import datasets
from tests.helpers import mp_util
from tests.helpers import train_runner
from xmae_jax import config_lib
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import model_checkpoint
from xmae_jax.training import train as train_lib

REPO = train_runner.REPO
RUNNER = train_runner.RUNNER
STEPS = 6
# Only host-side settings differ between the jobs of one device count, so they share one
# compiled step (the persistent cache); the learning rate is baked into the step.
BASE = {
    "train.num_steps": STEPS,
    "train.log_every": 1,
    "train.eval_every": 3,
    "train.eval_batches": 1,
    "train.checkpoint_every": 3,
    "train.figure_every": 1000,
}
FSDP = {"mesh.axes": [["data", -1], ["fsdp", 2]], "mesh.param_rules": [[".*", "fsdp"]]}
TOY = {"model.name": "toy_mae"}
TIMEOUT = 420


def _load_config(arg="tiny"):
  return train_runner.load_config(f"configs/xmae.py:{arg}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 8, 1.0)


@pytest.fixture(scope="module")
def nan_dataset(dataset, tmp_path_factory):
  """The dataset with the ECG of one record of global batch 1 (the 2nd step) set to NaN."""
  import shutil

  import msgpack
  from array_record.python import array_record_module as arm

  from xmae_jax.data import pipeline
  from xmae_jax.data import shards

  out = tmp_path_factory.mktemp("nan_data") / "d"
  shutil.copytree(dataset, out)
  config = _tiny(out)
  ds = pipeline.make_train_dataset(
      config.data,
      global_batch_size=config.train.batch_size,
      seed=int(config.seed),
      process_index=0,
      process_count=1,
      with_index=True,
  )
  bad = int(ds[1]["index"][0])
  paths, _ = shards.split_paths(out, "train")
  raw = []
  for path in paths:
    reader = arm.ArrayRecordReader(path)
    raw += reader.read_all()
    reader.close()
  d = msgpack.unpackb(raw[bad], raw=False)
  d["ecg"] = np.full(len(d["ecg"]) // 2, np.nan, "<f2").tobytes()
  raw[bad] = msgpack.packb(d, use_bin_type=True)
  for path in paths:
    os.remove(path)
  manifest = shards.read_manifest(out)
  manifest["splits"]["train"] = shards.write_split(out, "train", raw)
  (out / shards.MANIFEST).write_text(json.dumps(manifest))
  return out


def _spec(path: Path, data_dir, jobs) -> Path:
  path.write_text(
      json.dumps(
          {
              "config": "configs/xmae.py:tiny",
              "overrides": {**BASE, "data.dir": str(data_dir)},
              "jobs": jobs,
          }
      )
  )
  return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset, nan_dataset, cache_env):
  """Every heavy run of this module, started concurrently: {"one": ..., "eight": ..., "mp": ...}."""
  root = tmp_path_factory.mktemp("runs")
  one = _spec(
      root / "one.json",
      dataset,
      [
          {
              "name": "full",
              "workdir": str(root / "one_full"),
              "overrides": {"train.figure_every": 6},
          },
          {"name": "interrupted", "workdir": str(root / "one_resume"), "stop_at_step": 3},
          {"name": "resumed", "workdir": str(root / "one_resume")},
          {
              "name": "nan",
              "workdir": str(root / "one_nan"),
              "save_params": False,
              "overrides": {
                  "data.dir": str(nan_dataset),
                  "train.checkpoint_every": 1,
                  "train.eval_every": 100,
              },
          },
          {
              "name": "warm",
              "workdir": str(root / "one_warm"),
              "overrides": {"train.init_from": str(root / "one_full")},
          },
          {"name": "toy", "workdir": str(root / "one_toy"), "overrides": TOY},
          {
              "name": "toy_half",
              "workdir": str(root / "one_toy_half"),
              "overrides": TOY,
              "stop_at_step": 3,
              "save_params": False,
          },
      ],
  )
  eight = _spec(
      root / "eight.json",
      dataset,
      [
          {"name": "rep", "workdir": str(root / "eight_rep"), "overrides": TOY},
          {"name": "fsdp", "workdir": str(root / "eight_fsdp"), "overrides": {**TOY, **FSDP}},
          {
              "name": "bad_batch",
              "workdir": str(root / "eight_bad"),
              "overrides": {**TOY, "train.batch_size": 12},
          },
      ],
  )
  mp = _spec(
      root / "mp.json",
      dataset,
      [
          {"name": "rep", "workdir": str(root / "mp_rep"), "overrides": TOY},
          {"name": "fsdp", "workdir": str(root / "mp_fsdp"), "overrides": {**TOY, **FSDP}},
      ],
  )
  procs = {
      "one": train_runner.start(one, 1, cache_env),
      "eight": train_runner.start(eight, 8, cache_env),
  }
  results = {"root": root}
  mp_results = mp_util.run_processes(
      RUNNER, 2, args=[str(mp)], devices_per_process=2, timeout=TIMEOUT, env=cache_env
  )
  results["mp"] = mp_results[0].result
  for name, proc in procs.items():
    results[name] = train_runner.finish(proc, TIMEOUT)
  return results


def _losses(job) -> tuple[np.ndarray, np.ndarray]:
  rows = job["metrics"]
  train = np.array([r["train_loss"] for r in rows], np.float64)
  val = np.array([r["val_loss"] for r in rows if "val_loss" in r], np.float64)
  return train, val


def _params(workdir) -> dict:
  with np.load(Path(workdir) / "final_params.npz") as z:
    return {k: z[k] for k in z.files}


def test_losses_and_parameters_do_not_depend_on_the_topology(runs):
  assert runs["one"]["devices"] == 1 and runs["eight"]["devices"] == 8
  assert runs["mp"]["devices"] == 4 and runs["mp"]["processes"] == 2
  ref_train, ref_val = _losses(runs["one"]["toy"])
  assert len(ref_train) == STEPS and len(ref_val) == 2 and np.all(np.isfinite(ref_train))
  assert len(set(np.round(ref_train, 6))) > 1  # the loss moves: a real comparison
  ref_params = _params(runs["root"] / "one_toy")
  for group, job, workdir in [
      ("eight", "rep", "eight_rep"),
      ("eight", "fsdp", "eight_fsdp"),
      ("mp", "rep", "mp_rep"),
      ("mp", "fsdp", "mp_fsdp"),
  ]:
    train, val = _losses(runs[group][job])
    np.testing.assert_allclose(train, ref_train, rtol=2e-5, err_msg=f"{group}/{job} train loss")
    np.testing.assert_allclose(val, ref_val, rtol=2e-5, err_msg=f"{group}/{job} val loss")
    params = _params(runs["root"] / workdir)
    assert params.keys() == ref_params.keys()
    for k in ref_params:
      np.testing.assert_allclose(
          params[k], ref_params[k], rtol=1e-3, atol=1e-5, err_msg=f"{group}/{job} parameter {k}"
      )


def test_resumed_run_equals_the_uninterrupted_run(runs):
  interrupted = runs["one"]["interrupted"]["summary"]
  assert interrupted["status"] == "stopped" and interrupted["step"] == 3
  resumed = runs["one"]["resumed"]
  assert resumed["summary"]["status"] == "completed" and resumed["summary"]["step"] == STEPS
  full_train, full_val = _losses(runs["one"]["full"])
  res_train, res_val = _losses(resumed)
  assert [r["step"] for r in resumed["metrics"]] == list(range(1, STEPS + 1))
  np.testing.assert_array_equal(res_train, full_train)
  np.testing.assert_array_equal(res_val, full_val)
  full, res = _params(runs["root"] / "one_full"), _params(runs["root"] / "one_resume")
  for k in full:
    np.testing.assert_array_equal(res[k], full[k], err_msg=k)


def test_run_stopped_on_one_device_resumes_on_two_processes(runs, dataset, cache_env):
  """The checkpoint of a 1-process run restores on 2 processes x 2 devices (the iterator state
  comes from the checkpoint's meta, as Grain's own files are per process) and continues as the
  uninterrupted run."""
  root = runs["root"]
  spec = _spec(
      root / "resume_mp.json",
      dataset,
      [{"name": "resumed", "workdir": str(root / "one_toy_half"), "overrides": TOY}],
  )
  result = mp_util.run_processes(
      RUNNER, 2, args=[str(spec)], devices_per_process=2, timeout=TIMEOUT, env=cache_env
  )[0].result
  job = result["resumed"]
  assert job["summary"]["status"] == "completed" and job["summary"]["step"] == STEPS
  train, val = _losses(job)
  ref_train, ref_val = _losses(runs["one"]["toy"])
  assert [r["step"] for r in job["metrics"]] == list(range(1, STEPS + 1))
  np.testing.assert_allclose(train, ref_train, rtol=2e-5)
  np.testing.assert_allclose(val, ref_val, rtol=2e-5)
  ref, got = _params(root / "one_toy"), _params(root / "one_toy_half")
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-6, err_msg=k)


def test_metrics_file_tensorboard_and_figures(runs):
  rows = runs["one"]["full"]["metrics"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for r in rows:
    assert {"step", "train_loss", "lr", "segments_per_s"} <= r.keys() and r["segments_per_s"] > 0
  assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
  assert rows[0]["lr"] < rows[1]["lr"] and rows[-1]["lr"] < rows[1]["lr"]  # warm-up, then decay
  workdir = runs["root"] / "one_full"
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  assert (workdir / "figures" / "reconstruction_step0000006.png").stat().st_size > 1000
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "xmae"


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(runs):
  job = runs["one"]["nan"]
  assert job["error_type"] == "NonFiniteLossError", job
  step = int(job["error"].split(" at step ")[1].split(":")[0])
  assert step == 2  # the NaN record is in global batch 1, i.e. the second step
  assert f"last good checkpoint: step {step - 1}" in job["error"]
  assert "\n" not in job["error"]
  ckpt = ckpt_lib.Checkpointer(runs["root"] / "one_nan", read_only=True)
  assert ckpt.latest_step() == step - 1
  ckpt.close()
  model, _ = model_checkpoint.load_model(runs["root"] / "one_nan")
  from flax import nnx

  assert all(
      np.all(np.isfinite(np.asarray(v)))
      for v in ckpt_lib.flatten(nnx.state(model)).values()
      if np.asarray(v).dtype.kind == "f"
  )


def test_batch_not_divisible_by_data_parallel_size_fails_at_start(runs):
  job = runs["eight"]["bad_batch"]
  assert job["error_type"] == "TrainingError"
  assert "train.batch_size=12 is not divisible by the data-parallel size 8" in job["error"]
  assert not (runs["root"] / "eight_bad" / "checkpoints").exists()


def test_load_model_best_and_latest(runs):
  workdir = runs["root"] / "one_full"
  model, config = model_checkpoint.load_model(workdir, "best")
  assert config.model.name == "xmae" and config.model.stem_widths == (8, 16, 16)
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  best_rows = [r for r in runs["one"]["full"]["metrics"] if "val_loss" in r]
  assert ckpt.best_step() == min(best_rows, key=lambda r: r["val_loss"])["step"]
  ckpt.close()
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint for step 4"):
    model_checkpoint.load_model(workdir, 4)


def test_init_from_starts_a_fresh_run_from_another_runs_best_weights(runs, dataset):
  source, warm = runs["root"] / "one_full", runs["root"] / "one_warm"
  best = ckpt_lib.Checkpointer(source, read_only=True)
  best_step = best.best_step()
  best.close()
  start = ckpt_lib.Checkpointer(warm, read_only=True)
  assert start.read_meta(0)["kind"] == "model" and not start.has_item(0, "opt")
  start.close()
  from flax import nnx

  a = ckpt_lib.flatten(nnx.state(model_checkpoint.load_model(source, best_step)[0]))
  b = ckpt_lib.flatten(nnx.state(model_checkpoint.load_model(warm, 0)[0]))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  # a new run: steps 1..STEPS with its own schedule, from the trained weights
  rows = runs["one"]["warm"]["metrics"]
  assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, STEPS + 1))
  first = [r["train_loss"] for r in runs["one"]["full"]["metrics"]][0]
  assert rows[0]["train_loss"] < first
  # other model settings: one line naming the key, nothing written
  with pytest.raises(train_lib.TrainingError, match=r"train.init_from .*model.d_model") as e:
    train_lib.train(
        _tiny(dataset, **{"model.d_model": 64, "train.init_from": str(source)}),
        runs["root"] / "other",
    )
  assert "\n" not in str(e.value) and not (runs["root"] / "other" / "checkpoints").exists()


# --- bad settings, in this process (they fail before anything is compiled) -------------------


def _tiny(data_dir, **overrides):
  c = _load_config()
  c.data.dir = str(data_dir)
  return config_lib.apply_overrides(c, overrides)


@pytest.mark.parametrize("case", ["unknown_model", "missing_dir", "empty_dir", "other_model"])
def test_bad_settings_fail_at_start_with_one_line(case, dataset, tmp_path):
  workdir = tmp_path / "run"
  if case == "unknown_model":
    config, pattern = _tiny(dataset, **{"model.name": "nope"}), "unknown model 'nope'"
  elif case == "missing_dir":
    config, pattern = _tiny(tmp_path / "absent"), "does not exist"
  elif case == "empty_dir":
    (tmp_path / "empty").mkdir()
    config, pattern = _tiny(tmp_path / "empty"), "manifest.json is missing"
  else:
    meta = workdir / "checkpoints" / "5" / "meta"
    meta.mkdir(parents=True)
    (meta / "metadata").write_text(json.dumps({"model_name": "m2ae", "config": {}, "step": 5}))
    config, pattern = _tiny(dataset), "holds a checkpoint of model 'm2ae'"
  with pytest.raises(train_lib.TrainingError, match=pattern) as e:
    train_lib.train(config, workdir)
  assert "\n" not in str(e.value)
  if case != "other_model":
    assert not (workdir / "checkpoints").exists()


def test_cli_prints_one_line_and_exits_1_on_a_bad_setting(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "xmae_jax.cli.xmae_train",
          "--config",
          "configs/xmae.py:tiny",
          "--workdir",
          str(tmp_path / "run"),
          f"--config.data.dir={tmp_path / 'absent'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("xmae-train: error: data directory") and "absent" in last


@pytest.mark.parametrize("existing", [False, True], ids=["new_workdir", "existing_workdir"])
def test_cli_refused_on_a_bad_manifest_leaves_the_workdir_as_it_was(tmp_path, existing):
  data = tmp_path / "data"
  data.mkdir()
  (data / "manifest.json").write_text("{not json")
  workdir = tmp_path / "runs" / "run"
  if existing:
    workdir.mkdir(parents=True)
    (workdir / "notes.txt").write_text("someone's notes")
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "xmae_jax.cli.xmae_train",
          "--config",
          "configs/xmae.py:tiny",
          "--workdir",
          str(workdir),
          f"--config.data.dir={data}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  assert proc.returncode == 1
  ours = [line for line in proc.stderr.splitlines() if line.startswith("xmae-train")]
  assert len(ours) == 1 and ours[0].startswith("xmae-train: error: "), proc.stderr
  assert "manifest.json" in ours[0]
  # Nothing made (not even the new workdir's parent), nothing of the existing one touched.
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
  assert workdir.exists() == existing


def test_sigterm_saves_a_checkpoint_that_restores(dataset, tmp_path, cache_env, monkeypatch):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(  # xmae-train's main, with the toy model registered
      [
          sys.executable,
          str(RUNNER),
          "cli",
          "--config",
          "configs/xmae.py:tiny",
          "--config.model.name=toy_mae",
          "--workdir",
          str(workdir),
          f"--config.data.dir={dataset}",
          "--config.train.num_steps=10000",
          "--config.train.log_every=1",
          "--config.train.eval_every=10000",
          "--config.train.checkpoint_every=10000",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, **cache_env, "PYTHONPATH": str(REPO)},
      start_new_session=True,
  )
  try:
    deadline = time.monotonic() + TIMEOUT
    while len(metrics_lib.read_metrics(workdir)) < 2:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no training step logged in time"
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 143, err[-3000:]
  logged = metrics_lib.read_metrics(workdir)[-1]["step"]
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  saved = ckpt.latest_step()
  meta = ckpt.read_meta(saved)
  ckpt.close()
  assert saved >= logged >= 2 and meta["step"] == saved
  assert meta["data_iter_state"] is not None and meta["kind"] == "train"
  from xmae_jax import models

  monkeypatch.setitem(models.REGISTRY, "toy_mae", train_runner.TOY_MODEL)
  model, config = model_checkpoint.load_model(workdir, "latest")
  assert config.train.num_steps == 10000 and config.model.name == "toy_mae"
  assert model.norm.use_running_average  # eval mode


def test_cli_unknown_mask_mode_is_one_line(dataset, tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "xmae_jax.cli.xmae_train",
          "--config",
          "configs/xmae.py:tiny",
          "--workdir",
          str(tmp_path / "run"),
          f"--config.data.dir={dataset}",
          "--config.masking.mode=random",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("xmae-train: error: unknown mask mode 'random'"), proc.stderr[-2000:]
  assert not any("Traceback" in line for line in lines)
