"""gs:// end to end against a local storage server (tests/storage/conftest.py), as on a pod:
prepare writes a dataset to a bucket, training reads it from there with its workdir in the
bucket, is stopped by SIGTERM and resumes from the bucket with the losses of an uninterrupted
run; a second trainer on the same workdir is refused by the lock object (taken over once
abandoned); a package is exported to the bucket and `load_encoder("gs://...")` embeds with it.
A bucket that does not exist, credentials that cannot be found and an endpoint that does not
answer are each one line naming the path, before any work.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import mp_util
from tests.helpers import train_runner
from xmae_jax import atomic
from xmae_jax import locks
from xmae_jax import paths
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import workdir_lock

REPO = train_runner.REPO
TIMEOUT = 420


def _cli(tool: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"xmae_jax.cli.{tool}", *args]


# A long schedule (the learning rate depends on it): runs end by SIGTERM or stop_at_step.
SETTINGS = {
    "train.num_steps": 100000,
    "train.log_every": 1,
    "train.eval_every": 100000,
    "train.checkpoint_every": 100000,
    "train.figure_every": 100000,
}


def _train_cli(workdir: str, data: str) -> list[str]:
  return _cli(
      "xmae_train",
      "--config",
      f"{REPO}/configs/xmae.py:tiny",
      "--workdir",
      workdir,
      f"--config.data.dir={data}",
      *(f"--config.{k}={v}" for k, v in SETTINGS.items()),
  )


def _run(cmd, env, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _runner(spec: dict, env, tmp_path) -> dict:
  """tests/helpers/train_runner.py's jobs in one process; their results."""
  path = tmp_path / "spec.json"
  path.write_text(json.dumps({"config": "configs/xmae.py:tiny", **spec}))
  return train_runner.finish(train_runner.start(path, 1, env), TIMEOUT)


@pytest.fixture(scope="module")
def env(gcs, tmp_path_factory):
  """The emulator's variables plus a compilation cache shared by the module's runs."""
  return {
      **gcs.env,
      "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla")),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      **mp_util.FAST_COMPILE_ENV,
  }


def test_prepare_train_stop_resume_export_embed_on_gs(gcs, env, tmp_path):
  data, run, package = f"{gcs.bucket}/data", f"{gcs.bucket}/run", f"{gcs.bucket}/pkg"
  # 1. Prepare writes the dataset into the bucket (and nothing to a local folder named gs:).
  prepared = _run(
      _cli(
          "xmae_prepare",
          "--source",
          "synthetic",
          "--output",
          data,
          "--num-subjects",
          "6",
          "--minutes-per-subject",
          "2",
          "--workers",
          "1",
          "--no-progress",
      ),
      env,
      tmp_path,
  )
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  manifest = json.loads(paths.path(f"{data}/manifest.json").read_text())
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      assert paths.path(f"{data}/{shard}").is_file()

  # 2. Training with its workdir in the bucket, stopped by SIGTERM; while it runs, the lock
  # object there refuses a second trainer.
  proc = subprocess.Popen(
      _train_cli(run, data),
      cwd=tmp_path,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,
  )
  try:
    deadline = time.monotonic() + TIMEOUT
    while len(metrics_lib.read_metrics(run)) < 2:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no training step logged in time"
      time.sleep(0.5)
    with pytest.raises(workdir_lock.WorkdirBusyError) as busy:
      workdir_lock.acquire(run)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 143, err[-3000:]
  assert str(busy.value).startswith(f"workdir {run} is in use by pid {proc.pid} on host ")
  assert not paths.path(f"{run}/xmae-train.lock").exists()  # released at the end of the run
  saved = sorted(
      int(p.name) for p in paths.path(f"{run}/checkpoints").iterdir() if p.name.isdigit()
  )
  assert saved and saved[-1] >= 2

  # 3. Resumed from the bucket: the losses are those of an uninterrupted run.
  stop = saved[-1] + 2
  result = _runner(
      {
          "overrides": {**SETTINGS, "data.dir": data},
          "jobs": [
              {"name": "resumed", "workdir": run, "stop_at_step": stop, "save_params": False},
              {
                  "name": "reference",
                  "workdir": str(tmp_path / "reference"),
                  "stop_at_step": stop,
                  "save_params": False,
              },
          ],
      },
      env,
      tmp_path,
  )
  resumed, reference = result["resumed"], result["reference"]
  assert resumed["summary"]["status"] == reference["summary"]["status"] == "stopped"
  assert [r["step"] for r in resumed["metrics"]] == list(range(1, stop + 1))
  assert [(r["step"], r["train_loss"]) for r in resumed["metrics"]] == [
      (r["step"], r["train_loss"]) for r in reference["metrics"]
  ]
  assert [p.name for p in paths.path(f"{run}/tb").iterdir()]  # TensorBoard events uploaded
  assert not (tmp_path / "gs:").exists() and not (REPO / "gs:").exists()

  # 4. Export to the bucket; load_encoder reads it from there and embeds.
  exported = _run(_cli("xmae_export", "--workdir", run, "--output", package), env, tmp_path)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert paths.path(f"{package}/package.json").is_file()
  from xmae_jax.evaluation import encoder as encoder_lib

  enc = encoder_lib.load_encoder(package)
  x = np.random.default_rng(0).standard_normal((3, enc.contract.segment_length)).astype(np.float32)
  z = enc.embed_prepared(x)
  assert z.shape == (3, enc.latent_dim) and np.isfinite(z).all()


# gcsfs retries a request that gets no answer 5 times, sleeping 1, 2, 4, 8 and 16 s (plus up to
# 1 s each) in between, and has no setting for it: run as sitecustomize, this keeps the retries
# and shortens only those sleeps a hundredfold, so the unanswered endpoint costs no half minute.
QUICK_GCSFS_RETRIES = """
import asyncio
import gcsfs.retry

class _QuickSleep:
  def __getattr__(self, name):
    return getattr(asyncio, name)

  @staticmethod
  async def sleep(seconds, *args, **kwargs):
    return await asyncio.sleep(seconds / 100, *args, **kwargs)

gcsfs.retry.asyncio = _QuickSleep()
"""


@pytest.mark.parametrize("case", ["no bucket", "no credentials", "no endpoint"])
def test_unusable_storage_is_one_line_before_any_work(gcs, env, tmp_path, case):
  workdir, extra = f"{gcs.bucket}/run-{case.replace(' ', '-')}", {}
  if case == "no bucket":
    workdir = "gs://no-such-bucket/run"
  elif case == "no credentials":
    extra = {
        "FSSPEC_GCS_TOKEN": "google_default",
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json"),
    }
  else:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(QUICK_GCSFS_RETRIES)
    extra = {
        "STORAGE_EMULATOR_HOST": gcs.unused_url(),
        "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(site)]),
    }
  result = _run(_train_cli(workdir, f"{gcs.bucket}/data"), {**env, **extra}, tmp_path)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(f"xmae-train: error: workdir {workdir} cannot be written ("), lines
  assert "Traceback" not in result.stderr


def test_lock_object_is_refused_while_held_and_taken_over_when_abandoned(gcs):
  url = f"{gcs.bucket}/locked/xmae-train.lock"
  held = locks.take(url)
  assert isinstance(held, locks.ObjectLock)
  owner = json.loads(paths.path(url).read_text())
  assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
  assert locks.take(url) is None  # a live holder: refused
  held.release()
  assert not paths.path(url).exists()
  # A holder on another host that stopped refreshing the lock (its VM was lost): taken over.
  paths.path(url).write_text(
      json.dumps(
          {
              "pid": 1,
              "host": "lost-vm",
              "since": "then",
              "heartbeat": time.time() - 2 * locks.STALE_S,
          }
      )
  )
  taken = locks.take(url)
  assert isinstance(taken, locks.ObjectLock)
  assert json.loads(paths.path(url).read_text())["pid"] == os.getpid()
  taken.release()
  # One that still refreshes it is not.
  paths.path(url).write_text(
      json.dumps({"pid": 1, "host": "lost-vm", "since": "then", "heartbeat": time.time()})
  )
  assert locks.take(url) is None


def test_a_mirrored_folder_follows_objects_replaced_in_the_bucket(gcs):
  url = f"{gcs.bucket}/mirrored"
  atomic.atomic_write(f"{url}/a.bin", b"first")
  atomic.atomic_write(f"{url}/sub/b.txt", "kept")
  local = paths.local_mirror(url, "dataset")
  assert (local / "a.bin").read_bytes() == b"first" and (local / "sub/b.txt").read_text() == "kept"
  time.sleep(1.1)  # object times have a resolution of a second
  atomic.atomic_write(f"{url}/a.bin", b"other")  # the same size, other bytes
  assert (paths.local_mirror(url, "dataset") / "a.bin").read_bytes() == b"other"
  with pytest.raises(paths.StorageError, match=rf"^dataset {gcs.bucket}/absent cannot be read"):
    paths.local_mirror(f"{gcs.bucket}/absent", "dataset")


def test_prepare_reads_its_input_from_the_bucket(gcs, tmp_path):
  # Raw recordings in a bucket: the readers open local files, so the input is mirrored
  # locally (paths.local_mirror); the dataset's request names the URL, so a rerun resumes.
  import neurokit2 as nk
  import pandas as pd

  from xmae_jax.data import prepare as prepare_lib

  url = f"{gcs.bucket}/raw_csv"
  fs, seconds = 125, 60
  for i in range(2):
    ecg = nk.ecg_simulate(
        duration=seconds, sampling_rate=fs, heart_rate=60 + 10 * i, random_state=i
    )
    ppg = nk.ppg_simulate(
        duration=seconds, sampling_rate=fs, heart_rate=60 + 10 * i, random_state=i
    )
    atomic.atomic_write(
        f"{url}/subject{i}.csv", pd.DataFrame({"ecg": ecg, "ppg": ppg}).to_csv(index=False)
    )
  out = tmp_path / "out"
  prepare = lambda: prepare_lib.prepare_dataset(  # noqa: E731
      "csv", url, out, source_options={"fs": float(fs)}, progress=False, log=None
  )
  report = prepare()
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["request"]["input"] == url  # the URL, not the local copy
  assert sum(s["records"] for s in manifest["splits"].values()) > 0, manifest["splits"]
  assert json.dumps(report)  # the closing report
  # The same command again resumes (same request), reading the mirror refreshed in place.
  prepare()
  with pytest.raises(paths.StorageError, match=rf"^input {gcs.bucket}/absent cannot be read"):
    prepare_lib.prepare_dataset(
        "csv", f"{gcs.bucket}/absent", tmp_path / "o2", source_options={"fs": 125.0}, log=None
    )
