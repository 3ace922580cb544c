"""Multi-process runs of xmae-train (2 local CPU processes x 2 fake devices) under real faults.

* A rerun with a warm persistent compilation cache trains like the first run. Process 0 alone
  writes the cache and on CPU its keys differ per process, so a rerun finds process 0's steps in
  the cache while process 1 compiles them anew. The test makes that gap longer than the 30 s
  gloo collectives wait for a peer (in the rerun, every process that really compiles the train
  step sleeps 40 s first, as a slow compile would), so the run only passes when the processes
  meet after compiling and before the first collective. The first run compiles at its own
  speed: both of its processes compile, so it has no such gap to bridge.
* When one process is killed after the first checkpoint, the other exits non-zero within a
  bound and its last stderr line names the lost process and the intact checkpoint.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest

from tests.helpers import datasets
from tests.helpers import train_runner
from xmae_jax.training import checkpoint as ckpt_lib
from xmae_jax.training import metrics as metrics_lib

REPO = train_runner.REPO
RUNNER = train_runner.RUNNER
TIMEOUT = 480
SLOW_COMPILE_S = 40  # longer than gloo's 30 s wait for a peer at the first collective
PEER_LOSS_BOUND_S = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 6, 1.0)


def _start_group(
    workdir: Path, dataset: Path, flags: list[str], env: dict
) -> list[subprocess.Popen]:
  """Two xmae-train processes (train_runner's `cli` mode: the real main, toy model registered)."""
  port = portpicker.pick_unused_port()
  procs = []
  for i in range(2):
    procs.append(
        subprocess.Popen(
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
                "--coordinator_address",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                *flags,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                **env,
            },
            start_new_session=True,
        )
    )
  return procs


def _kill(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish_group(procs, timeout: float) -> list[tuple[int, str, str]]:
  deadline = time.monotonic() + timeout
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      outs.append((p.returncode, out, err))
  except subprocess.TimeoutExpired:
    for p in procs:
      _kill(p)
    pytest.fail(
        "the processes did not finish in time:\n"
        + "\n".join(f"--- process {i}\n{p.communicate()[1][-2500:]}" for i, p in enumerate(procs))
    )
  finally:
    for p in procs:
      _kill(p)
  return outs


SLOW_COMPILE = f"""
import time
from jax._src import compiler
_compile = compiler._compile_and_write_cache
def _slow(backend, computation, *args, **kwargs):
  if "step_fn" in str(computation.operation.attributes["sym_name"]):
    time.sleep({SLOW_COMPILE_S})
  return _compile(backend, computation, *args, **kwargs)
compiler._compile_and_write_cache = _slow
"""


def test_rerun_with_a_warm_compilation_cache_trains_like_the_first_run(dataset, tmp_path):
  # In the rerun, sitecustomize runs in both processes: a persistent-cache miss of the train step
  # is slow.
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(SLOW_COMPILE)
  cache = tmp_path / "xla_cache"
  # Its own cache, also over a suite-wide JAX_COMPILATION_CACHE_DIR (which wins over the flag).
  env = {
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_COMPILATION_CACHE_DIR": str(cache),
  }
  pythonpath = {"cold": str(REPO), "warm": os.pathsep.join([str(REPO), str(site)])}
  flags = [
      "--config.train.num_steps=4",
      "--config.train.log_every=1",
      "--config.train.eval_every=2",
      "--config.train.eval_batches=1",
      "--config.train.figure_every=1000",
      f"--compilation_cache={cache}",
  ]
  losses = []
  for run in ("cold", "warm"):
    workdir = tmp_path / run
    run_env = {**env, "PYTHONPATH": pythonpath[run]}
    outs = _finish_group(_start_group(workdir, dataset, flags, run_env), TIMEOUT)
    for i, (rc, _, err) in enumerate(outs):
      assert rc == 0, f"{run} run, process {i} (exit {rc}):\n{err[-4000:]}"
    rows = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], rows
    losses.append([(r["train_loss"], r.get("val_loss")) for r in rows])
    assert any(cache.iterdir())
  np.testing.assert_allclose(np.array(losses[1], float), np.array(losses[0], float), rtol=1e-6)


def test_lost_peer_ends_the_other_process_with_one_line(dataset, tmp_path):
  workdir = tmp_path / "run"
  flags = [
      "--config.train.num_steps=100000",
      "--config.train.log_every=1",
      "--config.train.eval_every=100000",
      "--config.train.checkpoint_every=3",
      "--compilation_cache=",
  ]
  procs = _start_group(workdir, dataset, flags, {})
  try:
    deadline = time.monotonic() + TIMEOUT
    while not (workdir / ckpt_lib.CHECKPOINT_DIR / "3").is_dir():
      for i, p in enumerate(procs):
        assert p.poll() is None, f"process {i} ended early:\n{p.communicate()[1][-3000:]}"
      assert time.monotonic() < deadline, "no checkpoint in time"
      time.sleep(0.2)
    _kill(procs[1])
    killed = time.monotonic()
    try:
      _, err = procs[0].communicate(timeout=PEER_LOSS_BOUND_S)
    except subprocess.TimeoutExpired:
      _kill(procs[0])
      pytest.fail(
          f"process 0 still ran {PEER_LOSS_BOUND_S} s after its peer was killed:\n"
          + procs[0].communicate()[1][-3000:]
      )
    took = time.monotonic() - killed
    (tmp_path / "survivor.stderr").write_text(err)
  finally:
    for p in procs:
      _kill(p)
  assert procs[0].returncode not in (0, None), err[-3000:]
  last = err.strip().splitlines()[-1]
  assert re.fullmatch(
      r"xmae-train: error: lost process 1 of 2 .*; the last checkpoint \(step \d+ "
      r"in .*\) is intact.*",
      last,
  ), err[-3000:]
  saved = int(re.search(r"\(step (\d+) ", last).group(1))
  assert saved >= 3 and saved % 3 == 0
  assert (workdir / ckpt_lib.CHECKPOINT_DIR / str(saved)).is_dir()
  print(json.dumps({"survivor_exit_s": round(took, 1), "last_line": last}))
