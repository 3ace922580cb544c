"""Faults a real run meets: damaged checkpoints and two trainers on one workdir.

Each test injects the fault into real files and asserts the outcome the user sees (one line; the
command-line tools print it and exit 1, or fall back and say so in one line) and that nothing
was lost (the intact checkpoint is used, the damaged one is kept aside, weights are exact).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import datasets
from tests.helpers import mp_util
from tests.helpers import train_runner
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import checkpoint_integrity as integrity
from xmae_jax.training import model_checkpoint
from xmae_jax.training import workdir_lock

REPO = train_runner.REPO
RUNNER = train_runner.RUNNER


# --- damage ------------------------------------------------------------------------------------


def _largest_data_file(step_dir: Path) -> Path:
  files = [p for p in (step_dir / "model").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def damage(step_dir: Path, kind: str) -> None:
  """One of the faults of the issue, applied to checkpoint directory `step_dir`."""
  if kind in ("ff", "flip", "truncate_data"):
    path = _largest_data_file(step_dir)
    size = path.stat().st_size
    with open(path, "r+b") as f:
      if kind == "ff":  # 8 bytes of 0xFF into the model data
        f.seek(size // 2)
        f.write(b"\xff" * 8)
      elif kind == "flip":  # one bit of one byte
        f.seek(size // 2)
        byte = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([byte ^ 0x01]))
      else:
        f.truncate(size // 2)
  elif kind == "truncate_meta":
    path = step_dir / "meta" / "metadata"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
  elif kind == "missing_item":
    shutil.rmtree(step_dir / "model")
  else:
    raise ValueError(kind)


# --- the digest itself ---------------------------------------------------------------------------


def test_digest_sees_a_one_bit_change_and_a_swap():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 33)).astype(np.float32)
  base = integrity.digests({"x": x})["x"]
  assert base[:2] == ["float32", [64, 33]]
  flipped = x.copy()
  flipped.view(np.uint32)[17, 5] ^= 1
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert integrity.digests({"x": flipped})["x"] != base
  assert integrity.digests({"x": swapped})["x"] != base
  assert integrity.digests({"x": x.copy()})["x"] == base
  for dtype in (np.float16, np.int32, np.bool_, np.uint8):
    y = (x > 0).astype(dtype)
    flipped = 1 - y if dtype != np.bool_ else ~y
    assert integrity.digests({"y": y})["y"] != integrity.digests({"y": flipped})["y"]


# --- corrupt checkpoints: load_model / export ----------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A workdir with tiny-xMAE checkpoints 3 and 7 (different weights), and each one's weights."""
  from flax import nnx

  from xmae_jax import config_lib
  from xmae_jax import models

  config = config_lib.load(f"{REPO / 'configs' / 'xmae.py'}:tiny")
  workdir = tmp_path_factory.mktemp("ckpts") / "run"
  weights = {}
  for step in (3, 7):
    model = models.build(config, nnx.Rngs(step))
    model.eval()
    model_checkpoint.write_model_checkpoint(workdir, model, config, step=step)
    weights[step] = {k: np.asarray(v) for k, v in ckpt_lib.flatten(nnx.state(model)).items()}
  return workdir, weights


def _copy(two_checkpoints, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(two_checkpoints[0], workdir)
  return workdir


def _weights(model) -> dict:
  from flax import nnx

  return {k: np.asarray(v) for k, v in ckpt_lib.flatten(nnx.state(model)).items()}


@pytest.mark.parametrize("kind", ["ff", "flip", "truncate_data", "truncate_meta", "missing_item"])
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact(kind, two_checkpoints, tmp_path):
  workdir = _copy(two_checkpoints, tmp_path)
  damage(workdir / "checkpoints" / "7", kind)
  lines = []
  model, config, step, meta = model_checkpoint.restore_model(workdir, "latest", log=lines.append)
  assert step == 3 and meta["step"] == 3 and config.model.name == "xmae"
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert "step 7" in lines[0] and "using step 3" in lines[0]
  got, want = _weights(model), two_checkpoints[1][3]
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert (workdir / "checkpoints" / "7").is_dir()  # loading never deletes anything


def test_export_of_a_damaged_latest_checkpoint_uses_the_intact_one(two_checkpoints, tmp_path):
  from xmae_jax.cli import xmae_export as export_cli
  from xmae_jax.evaluation import encoder as encoder_lib

  workdir = _copy(two_checkpoints, tmp_path)
  damage(workdir / "checkpoints" / "7", "ff")
  out = tmp_path / "pkg"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "xmae_jax.cli.xmae_export",
          "--workdir",
          str(workdir),
          "--output",
          str(out),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  notes = [l for l in proc.stderr.splitlines() if "corrupt checkpoint" in l]
  assert len(notes) == 1 and "step 7" in notes[0] and "using step 3" in notes[0], proc.stderr[
      -3000:
  ]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 3
  enc = encoder_lib.load_encoder(out)
  z = enc.embed(np.random.default_rng(0).uniform(-1, 1, (2, 1000)).astype(np.float32))
  assert np.all(np.isfinite(z))
  del export_cli


def test_no_intact_checkpoint_is_one_line_and_exit_1(two_checkpoints, tmp_path, capsys):
  from xmae_jax.cli import xmae_export as export_cli

  workdir = _copy(two_checkpoints, tmp_path)
  damage(workdir / "checkpoints" / "7", "flip")
  damage(workdir / "checkpoints" / "3", "truncate_meta")
  out = tmp_path / "pkg"
  assert export_cli.main(["--workdir", str(workdir), "--output", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and err.startswith("xmae-export: error: no intact checkpoint under"), err
  assert "step 7:" in err and "step 3:" in err
  assert not out.exists()
  # An explicit step is not replaced by another one.
  workdir2 = _copy(two_checkpoints, tmp_path / "b")
  damage(workdir2 / "checkpoints" / "7", "ff")
  with pytest.raises(
      ckpt_lib.CheckpointError, match=r"no intact checkpoint under .*: step 7: checkpoint .*7"
  ) as e:
    model_checkpoint.load_model(workdir2, 7)
  assert "\n" not in str(e.value)


def test_export_refuses_non_finite_weights(two_checkpoints, tmp_path):
  import jax
  from flax import nnx

  from xmae_jax.evaluation import export

  model, config = model_checkpoint.load_model(two_checkpoints[0], 3)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda v: v.at[(0,) * v.ndim].set(np.nan), params))
  with pytest.raises(export.ExportError, match="non-finite weights") as e:
    export.export_model(model, config, tmp_path / "pkg")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "pkg").exists()


# --- the workdir lock -----------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from xmae_jax.training import workdir_lock
    lock = workdir_lock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(600)
""")


def _hold(workdir: Path) -> subprocess.Popen:
  proc = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(workdir)],
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  line = proc.stdout.readline()
  assert line.strip() == "held", proc.stderr.read()
  return proc


def test_lock_refuses_a_second_holder_and_frees_when_the_holder_dies(tmp_path):
  workdir = tmp_path / "run"
  proc = _hold(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError) as e:
      workdir_lock.acquire(workdir)
    message = str(e.value)
    assert "\n" not in message
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message
  finally:
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup runs in the holder
    proc.wait()
  with workdir_lock.acquire(workdir) as lock:  # the crashed run's rerun is not refused
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  with workdir_lock.acquire(workdir):  # released on exit from the block
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 6, 2.0)


def test_second_trainer_on_a_workdir_is_refused_with_one_line(dataset, tmp_path):
  workdir = tmp_path / "run"
  holder = _hold(workdir)
  try:
    proc = subprocess.run(
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
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
    )
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()
  assert len([l for l in last if "Traceback" in l]) == 0, proc.stderr[-3000:]
  assert last[-1].startswith(f"xmae-train: error: workdir {workdir} is in use by pid {holder.pid}")
  assert not (workdir / "checkpoints").exists()


# --- corrupt checkpoints: resuming a run ---------------------------------------------------------


def _toy_config(data_dir, **overrides):
  train_runner.register_toy_model()
  from xmae_jax import config_lib

  config = train_runner.load_config("configs/xmae.py:tiny")
  config_lib.apply_overrides(
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
  return config


def test_resume_skips_a_corrupt_latest_checkpoint_and_loses_nothing(dataset, tmp_path, capsys):
  from xmae_jax.training import train as train_lib

  workdir = tmp_path / "run"
  config = _toy_config(dataset)
  assert train_lib.train(config, workdir)["step"] == 6
  uninterrupted, _ = model_checkpoint.load_model(workdir, 6)
  want = _weights(uninterrupted)
  damage(workdir / "checkpoints" / "6", "ff")
  capsys.readouterr()
  # The symptom: resuming reported the corrupt step as good. Now step 3 is restored,
  # steps 4-6 run again and give the uninterrupted run's weights.
  summary = train_lib.train(_toy_config(dataset, **{"train.num_steps": 6}), workdir)
  out = capsys.readouterr()
  notes = [l for l in (out.out + out.err).splitlines() if "corrupt checkpoint" in l]
  assert len(notes) == 1 and "step 6" in notes[0] and "using step 3" in notes[0], out
  assert summary["status"] == "completed" and summary["step"] == 6
  got = _weights(model_checkpoint.load_model(workdir, 6)[0])
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert (workdir / ckpt_lib.CORRUPT_DIR / "6").is_dir()  # the damaged one kept aside
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]
  # Every checkpoint damaged: one line, nothing written.
  for step in (3, 6):
    damage(workdir / "checkpoints" / str(step), "truncate_data")
  with pytest.raises(train_lib.TrainingError, match="no intact checkpoint under") as e:
    train_lib.train(
        _toy_config(dataset, **{"train.num_steps": 9}), workdir, allow_changes=("train.num_steps",)
    )
  assert "\n" not in str(e.value)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]


# --- several processes: each verifies its shards, all take the same decision ---------------------

MP_SCRIPT = textwrap.dedent("""
    import sys
    from tests.helpers import mp_util
    mp_util.initialize()
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from xmae_jax.training import checkpoint as ckpt_lib

    workdir, phase = sys.argv[1], sys.argv[2]
    sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("d",)), PartitionSpec("d"))
    host = {s: np.random.default_rng(s).normal(size=(1 << 14,)).astype(np.float32) for s in (3, 6)}
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    if phase == "save":   # process i writes its own shards (model/ocdbt.process_i/)
      for s, x in host.items():
        arr = jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])
        ckpt.save(s, model={"w": arr}, meta={"kind": "model", "step": s})
        ckpt.wait()
      ckpt.close()
      mp_util.emit({})
    else:
      target = {"w": jax.ShapeDtypeStruct((1 << 14,), np.float32, sharding=sharding)}
      step, got, note = ckpt_lib.restore_newest_intact(
          ckpt, ckpt.candidates("latest"), lambda s: ckpt.restore(s, model=target))
      exact = all(np.array_equal(np.asarray(sh.data), host[step][sh.index])
                  for sh in got["model"]["w"].addressable_shards)
      ckpt.close()
      mp_util.emit({"step": step, "note": note, "exact": exact})
""")


@pytest.mark.parametrize("kind", ["flip", "truncate_data", "digest"])
def test_processes_agree_on_the_fallback_when_one_process_shards_are_damaged(
    kind, tmp_path_factory
):
  """flip / truncate_data: process 1's shard files (process 1's read fails, process 0's
  succeeds); digest: the saved digest no longer matches what every process restored."""
  base = tmp_path_factory.getbasetemp() / "mp_ckpt"
  if not base.exists():
    mp_util.run_processes(
        MP_SCRIPT, 2, args=[str(base), "save"], devices_per_process=2, timeout=300
    )
  workdir = tmp_path_factory.mktemp("mp") / "run"
  shutil.copytree(base, workdir)
  if kind == "digest":
    meta_file = workdir / "checkpoints" / "6" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digests"]["model"]["w"][2] = "0" * 16
    meta_file.write_text(json.dumps(meta))
  # Only process 1 reads these files: process 0's restore succeeds, process 1's is damaged.
  files = [
      p
      for p in (workdir / "checkpoints" / "6" / "model" / "ocdbt.process_1").rglob("*")
      if p.is_file() and p.parent.name == "d"
  ]
  path = max(files, key=lambda p: p.stat().st_size)
  size = path.stat().st_size
  with open(path, "r+b") as f:
    if kind == "flip":
      f.seek(size // 2)
      byte = f.read(1)[0]
      f.seek(size // 2)
      f.write(bytes([byte ^ 0x01]))
    elif kind == "truncate_data":
      f.truncate(size // 2)
  results = mp_util.run_processes(
      MP_SCRIPT, 2, args=[str(workdir), "restore"], devices_per_process=2, timeout=300
  )
  for r in results:
    assert r.result["step"] == 3 and r.result["exact"], r.result
    assert "step 6" in r.result["note"] and "using step 3" in r.result["note"]
    if kind == "digest":
      assert "model array 'w' differs from what was saved" in r.result["note"]
