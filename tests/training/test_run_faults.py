"""Faults of a training run met from outside (issue 21): a full disk, a read-only workdir,
Ctrl-C, a resume with other settings, and the first log row after a resume.

Each test injects the fault (an OSError from the storage, a signal, a changed flag) and asserts
what the user sees: one line (`xmae-train: error: ...`, exit 1, or exit 130 for Ctrl-C), and that
nothing was lost (the earlier checkpoint stays and the run resumes to the uninterrupted result).
Where the machine lets an unprivileged process mount (`unshare -rm`), the disk is really full
(a small tmpfs) and the workdir really read-only (a read-only bind mount); otherwise those two
tests skip and the in-process ones inject the same errors.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import datasets
from tests.helpers import train_runner
from tests.helpers.train_runner import toy_config
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import model_checkpoint
from xmae_jax.training import run_settings
from xmae_jax.training import train as train_lib

REPO = train_runner.REPO
RUNNER = train_runner.RUNNER
# Log every 4 steps, checkpoint every 3: a run stopped at step 3 resumes inside a log window.
WINDOWS = {"train.log_every": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 6, 2.0)


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
  """An uninterrupted 6-step run and one stopped at step 3 then resumed (both in this process)."""
  root = tmp_path_factory.mktemp("runs")
  full = train_lib.train(toy_config(dataset, **WINDOWS), root / "full")
  stopped = train_lib.train(toy_config(dataset, **WINDOWS), root / "part", stop_at_step=3)
  window_at_3 = ckpt_lib.Checkpointer(root / "part", read_only=True).read_meta(3)["loop"]
  resumed = train_lib.train(toy_config(dataset, **WINDOWS), root / "part")
  return {
      "root": root,
      "full": full,
      "stopped": stopped,
      "resumed": resumed,
      "loop_at_3": window_at_3,
  }


def _train_rows(workdir) -> list[tuple[int, float]]:
  return [
      (r["step"], r["train_loss"]) for r in metrics_lib.read_metrics(workdir) if "train_loss" in r
  ]


def _copy(runs, tmp_path, name="part") -> Path:
  workdir = tmp_path / name
  shutil.copytree(runs["root"] / name, workdir)
  return workdir


def _steps(workdir) -> list[int]:
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def _env() -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


# --- item 13: the first log row after a resume ----------------------------------------------


def test_resumed_log_windows_equal_the_uninterrupted_run(runs):
  assert runs["stopped"]["status"] == "stopped" and runs["stopped"]["step"] == 3
  assert runs["resumed"]["status"] == "completed" and runs["full"]["status"] == "completed"
  # Steps 1-3 of the window that step 4 logs were saved with checkpoint 3 ...
  assert len(runs["loop_at_3"]["log_window"]) == 3
  assert {"loss", "lr"} <= runs["loop_at_3"]["log_window"][0].keys()
  # ... so the resumed run's rows are the uninterrupted run's, not the mean of step 4 alone.
  full, resumed = _train_rows(runs["root"] / "full"), _train_rows(runs["root"] / "part")
  assert [s for s, _ in full] == [4, 6]
  assert resumed == full


# --- item 19: a resume with other settings ----------------------------------------------------


def test_resume_with_other_run_settings_is_refused_unless_allowed(runs, dataset, tmp_path):
  workdir = _copy(runs, tmp_path)
  other_data = tmp_path / "other_data"
  shutil.copytree(dataset, other_data)
  for overrides, key in [
      ({"train.num_steps": 9}, "train.num_steps"),
      ({"data.dir": str(other_data)}, "data.dir"),
      ({"train.batch_size": 4}, "train.batch_size"),
  ]:
    with pytest.raises(train_lib.TrainingError) as e:
      train_lib.train(toy_config(dataset, **WINDOWS, **overrides), workdir)
    message = str(e.value)
    assert "\n" not in message
    assert f"holds a run of other settings ({key}: " in message, message
    assert f"--allow_resume_change={key}" in message and "checkpoint step 6" in message
  assert _steps(workdir) == [3, 6]
  assert _train_rows(workdir) == _train_rows(runs["root"] / "full")  # nothing rewritten
  # The same data directory by another path is the same setting (nothing left to train).
  (tmp_path / "link").symlink_to(dataset)
  same = train_lib.train(toy_config(tmp_path / "link", **WINDOWS), workdir)
  assert same["status"] == "completed" and same["step"] == 6
  # A key that is no run setting is named; an allowed change trains on (steps 7-9).
  with pytest.raises(train_lib.TrainingError, match="allowed resume change 'train.lr': not one"):
    train_lib.train(toy_config(dataset, **WINDOWS), workdir, allow_changes=("train.lr",))
  longer = train_lib.train(
      toy_config(dataset, **WINDOWS, **{"train.num_steps": 9}),
      workdir,
      allow_changes=("train.num_steps",),
  )
  assert longer["status"] == "completed" and longer["step"] == 9
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  assert ckpt.read_meta(9)["config"]["train"]["num_steps"] == 9
  ckpt.close()


def test_an_importer_checkpoint_takes_any_run_settings(runs, dataset, tmp_path):
  """A weights-only checkpoint (xmae-import-torch, train.init_from) starts the data stream and
  schedule anew: its config's data directory and length are no run to keep."""
  config = toy_config(dataset, **{"train.num_steps": 3})
  model, _ = model_checkpoint.load_model(runs["root"] / "full", 6)
  imported = toy_config("", **{"train.num_steps": 77})
  model_checkpoint.write_model_checkpoint(tmp_path / "run", model, imported, step=0)
  assert run_settings.check_compatible(tmp_path / "run", config, resume=True) == 0


# --- item 4: a read-only workdir ------------------------------------------------------------


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "resume"])
def test_read_only_workdir_fails_before_any_work(runs, dataset, tmp_path, monkeypatch, fresh):
  from xmae_jax.data import pipeline

  workdir = tmp_path / "new" if fresh else _copy(runs, tmp_path)
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

  def read_only(*args, **kwargs):  # what a read-only mount answers (root bypasses chmod)
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

  def no_work(*args, **kwargs):
    raise AssertionError("the dataset was read before the workdir was checked")

  monkeypatch.setattr(tempfile, "mkstemp", read_only)
  monkeypatch.setattr(pipeline, "count_records", no_work)
  with pytest.raises(train_lib.TrainingError) as e:
    train_lib.train(toy_config(dataset, **WINDOWS), workdir)
  assert str(e.value) == f"workdir {workdir} is not writable (read-only file system)"
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _unshare_available() -> bool:
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(
      ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
      capture_output=True,
      timeout=30,
  )
  return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _unshare_available(), reason="no unprivileged mount namespace (unshare -rm)"
)


@needs_mounts
def test_read_only_workdir_on_a_read_only_mount_is_one_line(runs, dataset, tmp_path):
  """xmae-train itself, fresh and resume, on a really read-only mount."""
  workdir = _copy(runs, tmp_path / "ro")
  mount = tmp_path / "ro"
  cli = [
      sys.executable,
      str(RUNNER),
      "cli",
      "--config",
      "configs/xmae.py:tiny",
      "--config.model.name=toy_mae",
      f"--config.data.dir={dataset}",
      "--config.train.num_steps=6",
      "--config.train.log_every=4",
  ]
  script = " && ".join(
      [
          f"mount --bind {mount} {mount}",
          f"mount -o remount,bind,ro {mount} {mount}",
          " ".join(
              cli
              + [
                  "--workdir",
                  str(workdir),
                  "2>",
                  str(tmp_path / "resume.err"),
                  ";",
                  "echo",
                  "$?",
                  ">",
                  str(tmp_path / "resume.rc"),
              ]
          ),
          " ".join(
              cli
              + [
                  "--workdir",
                  str(mount / "new"),
                  "2>",
                  str(tmp_path / "fresh.err"),
                  ";",
                  "echo",
                  "$?",
                  ">",
                  str(tmp_path / "fresh.rc"),
              ]
          ),
      ]
  )
  subprocess.run(
      ["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=_env(), timeout=300, check=True
  )
  for name, where in [("resume", workdir), ("fresh", mount / "new")]:
    err = (tmp_path / f"{name}.err").read_text()
    assert (tmp_path / f"{name}.rc").read_text().strip() == "1", err[-3000:]
    assert err.strip() == (
        f"xmae-train: error: workdir {where} is not writable (read-only file " "system)"
    ), err[-3000:]
  assert not (mount / "new").exists()


# --- item 3: a full disk ----------------------------------------------------------------------


def _no_space(path):
  # TensorStore's error under Orbax, as it reads when a tmpfs fills during a checkpoint.
  return ValueError(
      f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
      f'"{path}/": Failed writing: "{path}/d/0d61": Failed to write 446778 bytes '
      f"to file 11: No space left on device [tensorstore_spec=...]"
  )


@pytest.mark.parametrize("where", ["checkpoint", "metrics"])
def test_full_disk_is_one_line_and_the_run_resumes(runs, dataset, tmp_path, monkeypatch, where):
  """The disk fills at step 6: one line naming what could not be written; checkpoint 3 stays
  and the rerun gives the uninterrupted run's rows."""
  workdir = tmp_path / "run"
  train_lib.train(toy_config(dataset, **WINDOWS), workdir, stop_at_step=3)
  if where == "checkpoint":
    save = ckpt_lib.ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
      if step == 6:
        raise _no_space(self.directory / "6.orbax-checkpoint-tmp" / "model")
      return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "save", full_disk)
    expected = f"checkpoint {workdir.absolute() / 'checkpoints' / '6'} could not be written"
  else:

    class FillingFile:  # the metrics file on a disk that fills up during step 6's row

      def __init__(self, *args, **kwargs):
        self.file = open(*args, **kwargs)  # pylint: disable=consider-using-with

      def write(self, text):
        if text.startswith('{"step": 6,'):
          self.file.write(text[:20])  # what fit
          self.file.flush()
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(text)

      def flush(self):
        self.file.flush()

      def close(self):
        self.file.close()

    monkeypatch.setattr(metrics_lib, "open", FillingFile, raising=False)
    expected = f"{workdir / metrics_lib.METRICS_FILE} could not be written"
  with pytest.raises(train_lib.TrainingError) as e:
    train_lib.train(toy_config(dataset, **WINDOWS), workdir)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{expected}: no space left on device; "), message
  monkeypatch.undo()
  saved = _steps(workdir)
  assert 3 in saved and "checkpoint step" in message
  resumed = train_lib.train(toy_config(dataset, **WINDOWS), workdir)
  assert resumed["status"] == "completed" and resumed["step"] == 6
  assert _train_rows(workdir) == _train_rows(runs["root"] / "full")


FILL_AND_TRAIN = textwrap.dedent("""
    import contextlib, json, os, sys
    from tests.helpers.train_runner import toy_config
    from xmae_jax.training import train as train_lib
    data, workdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    config = lambda: toy_config(data, **{"train.log_every": 4})

    @contextlib.contextmanager
    def stderr_to(path):   # the file descriptor: what the libraries' threads print too
      saved = os.dup(2)
      with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
      try:
        yield
      finally:
        os.dup2(saved, 2)

    train_lib.train(config(), workdir, stop_at_step=3)
    fill = os.path.join(os.path.dirname(workdir), "fill")
    free = os.statvfs(workdir).f_bavail * os.statvfs(workdir).f_frsize
    with open(fill, "wb") as f:   # leave room for the metrics and config, not a checkpoint
      f.write(b"x" * max(0, free - 96 * 1024))
    result = {}
    with stderr_to(out + ".full.err"):
      try:
        train_lib.train(config(), workdir)
      except train_lib.TrainingError as e:
        result["error"] = str(e)
    os.remove(fill)
    with stderr_to(out + ".resume.err"):
      result["resumed"] = train_lib.train(config(), workdir)
    from xmae_jax.training import metrics
    result["rows"] = [(r["step"], r["train_loss"]) for r in metrics.read_metrics(workdir)
                      if "train_loss" in r]
    with open(out, "w") as f:
      json.dump(result, f)
""")


@needs_mounts
def test_a_really_full_disk_is_one_line_and_the_run_resumes(runs, dataset, tmp_path):
  """A 2 MB tmpfs, filled after checkpoint 3: Orbax's hundreds of lines of background-thread
  tracebacks are gone, the error is one line, and the run resumes to the uninterrupted rows."""
  mount, out = tmp_path / "mnt", tmp_path / "result.json"
  mount.mkdir()
  (tmp_path / "fill_and_train.py").write_text(FILL_AND_TRAIN)
  script = (
      f"mount -t tmpfs -o size=2m tmpfs {mount} && {sys.executable} "
      f"{tmp_path / 'fill_and_train.py'} {dataset} {mount / 'run'} {out}"
  )
  proc = subprocess.run(
      ["unshare", "-rm", "sh", "-c", script],
      cwd=REPO,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert "no space left on device" in result.get("error", ""), result
  assert "\n" not in result["error"] and "checkpoint step 3 is intact" in result["error"]
  err = Path(f"{out}.full.err").read_text()
  assert "Traceback" not in err and "ERROR" not in err, err[-3000:]
  assert result["resumed"]["status"] == "completed" and result["resumed"]["step"] == 6
  assert [tuple(r) for r in result["rows"]] == _train_rows(runs["root"] / "full")


# --- item 14: Ctrl-C ----------------------------------------------------------------------------


def test_ctrl_c_saves_a_checkpoint_and_exits_130_in_one_line(dataset, tmp_path):
  workdir = tmp_path / "run"
  cli = [
      sys.executable,
      str(RUNNER),
      "cli",
      "--config",
      "configs/xmae.py:tiny",
      "--config.model.name=toy_mae",
      "--workdir",
      str(workdir),
      f"--config.data.dir={dataset}",
      "--config.train.log_every=1",
      "--config.train.eval_every=10000",
      "--config.train.checkpoint_every=10000",
  ]
  proc = subprocess.Popen(
      cli + ["--config.train.num_steps=10000"],
      cwd=REPO,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )
  try:
    deadline = time.monotonic() + 300
    while len(metrics_lib.read_metrics(workdir)) < 2:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no training step logged in time"
      time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  lines = err.strip().splitlines()
  saved = _steps(workdir)[-1]
  assert (
      f"step {saved}: stopped by SIGINT; checkpoint saved, rerun the same command to " "resume"
  ) in lines
  assert out.strip().splitlines()[-1].startswith(f"xmae-train: preempted at step {saved}/10000")
  assert saved >= metrics_lib.read_metrics(workdir)[-1]["step"] >= 2
  # The rerun with another length is refused in one line naming the key and the flag.
  rerun = subprocess.run(
      cli + ["--config.train.num_steps=20000"],
      cwd=REPO,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert rerun.returncode == 1, rerun.stderr[-3000:]
  assert (
      rerun.stderr.strip()
      .splitlines()[-1]
      .startswith(
          f"xmae-train: error: workdir {workdir} holds a run of other settings (train.num_steps: "
          f"10000 there, 20000 here; checkpoint step {saved}): resume with the same value, or pass "
          "--allow_resume_change=train.num_steps"
      )
  ), rerun.stderr[-3000:]
  assert "Traceback" not in rerun.stderr
