"""launch/tpu_pod.sh and launch/slurm_gpu.sbatch in their dry-run mode (DRY_RUN=1): the commands
each worker (TPU VM) or task (SLURM) would run, printed, nothing run."""

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MESH = '--config.mesh.axes=(("data",-1),("fsdp",8))'


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
  clean = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(
          (
              "SLURM_",
              "TPU_",
              "ZONE",
              "REPO_URL",
              "BUCKET",
              "DATA_LOCAL",
              "XLA_PYTHON_CLIENT_MEM_FRACTION",
              "NODES",
              "WORKERS",
          )
      )
  }
  out = subprocess.run(
      ["bash", str(REPO / "launch" / script), *args],
      capture_output=True,
      text=True,
      timeout=60,
      cwd=REPO,
      env={**clean, "DRY_RUN": "1", **env},
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


def test_tpu_pod_prints_every_workers_commands():
  lines = _dry_run(
      "tpu_pod.sh",
      "configs/xmae.py:1b",
      "gs://bucket/run",
      MESH,
      "--config.data.dir=/data/pulsedb",
      WORKERS="4",
      TPU_NAME="pod",
      ZONE="z1",
      REPO_URL="https://example.org/xmae-jax.git",
      BUCKET="gs://bucket",
      DATA_LOCAL="/data/pulsedb",
  )
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh pod --zone=z1 ")
  assert "--worker=all" in lines[0]
  per_worker = {
      w: [line.split(": ", 1)[1] for line in lines if line.startswith(f"worker {w}: ")]
      for w in range(4)
  }
  assert sum(map(len, per_worker.values())) == len(lines) - 1
  assert all(cmds == per_worker[0] for cmds in per_worker.values())  # one script, every worker
  cmds = per_worker[0]
  assert any("git clone -q -b main https://example.org/xmae-jax.git xmae-jax" in c for c in cmds)
  assert "JAX_EXTRA=tpu bash launch/setup_env.sh" in " ".join(cmds)
  assert "gsutil -m rsync -r gs://bucket/data /data/pulsedb" in " ".join(cmds)
  train = shlex.split(cmds[-1])
  assert train == [
      ".venv/bin/python",
      "-m",
      "xmae_jax.cli.xmae_train",
      "--config",
      "configs/xmae.py:1b",
      "--workdir",
      "gs://bucket/run",
      MESH,
      "--config.data.dir=/data/pulsedb",
  ]


def test_tpu_pod_without_dry_run_needs_its_settings():
  out = subprocess.run(
      ["bash", str(REPO / "launch" / "tpu_pod.sh"), "c", "w"],
      capture_output=True,
      text=True,
      timeout=60,
      env={k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "DRY_RUN")},
  )
  assert out.returncode != 0 and "TPU_NAME" in out.stderr


def test_slurm_prints_every_tasks_command_and_environment():
  lines = _dry_run(
      "slurm_gpu.sbatch",
      "configs/xmae.py:300m",
      "runs/with space",
      MESH,
      NODES="2",
      TASKS_PER_NODE="3",
  )
  assert lines[0].startswith(f"cd {shlex.quote(str(REPO))} && srun --kill-on-bad-exit=1 ")
  tasks = lines[1:]
  assert len(tasks) == 6
  for t, line in enumerate(tasks):
    label, command = line.split(": ", 1)
    assert label == f"task {t}"
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words[:5])
    assert env == {
        "SLURM_PROCID": str(t),
        "SLURM_NTASKS": "6",
        "SLURM_NODEID": str(t // 3),
        "SLURM_LOCALID": str(t % 3),
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
    }
    assert words[5:] == [
        ".venv/bin/python",
        "-m",
        "xmae_jax.cli.xmae_train",
        "--config",
        "configs/xmae.py:300m",
        "--workdir",
        "runs/with space",
        MESH,
    ]
