#!/usr/bin/env bash
# Cloud TPU pod slice (e.g. v5e-32, v5p-64): the same command on every worker VM.
#   TPU_NAME=my-pod ZONE=us-east5-a PROJECT=my-project \
#   REPO_URL=GIT_URL_OF_YOUR_CLONE BUCKET=gs://my-bucket \
#     bash launch/tpu_pod.sh configs/xmae.py runs/xmae-paper --config.data.dir=/data/pulsedb
# Per worker: clone (or update) the repository, create the venv with jax[tpu] at the jax version
# of the tested set for the worker's Python (launch/setup_env.sh: constraints.txt on 3.11,
# constraints-current.txt on 3.12/3.13; PYTHON=python3.12 picks the interpreter), copy the
# prepared dataset from the bucket to local disk (unless DATA_LOCAL is set up already), then run
# xmae-train. jax.distributed.initialize() needs no flags on a pod: the trainer detects the TPU
# environment. Use a WORKDIR every worker can write (a gs:// path or a shared filesystem) so
# every worker saves its part of each checkpoint in one place.
# Preemption (maintenance events) delivers SIGTERM: the trainer saves and exits 143; rerunning
# this script resumes from the latest checkpoint.
# Before renting the slice: `xmae-compile --config CONFIG --topology v5p:4x4x4 --mesh ...` on any
# machine says whether the step fits a chip's HBM and how fast XLA expects it to run.
# DRY_RUN=1 prints the gcloud command and, for each of WORKERS (default 1) workers, every command
# that worker would run, and runs nothing (TPU_NAME, ZONE and REPO_URL may then be left unset).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: TPU_NAME=... ZONE=... [PROJECT=...] REPO_URL=... $0 CONFIG WORKDIR [flags...]" >&2
  exit 2
fi
dry_run="${DRY_RUN:-0}"
if [ "$dry_run" = 1 ]; then
  TPU_NAME="${TPU_NAME:-TPU_NAME}"; ZONE="${ZONE:-ZONE}"; REPO_URL="${REPO_URL:-REPO_URL}"
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO_URL:?set REPO_URL}"
config="$(printf '%q' "$1")"; workdir="$(printf '%q' "$2")"; shift 2
# Quoted one by one: flags holding spaces or parentheses (mesh axes) reach the worker intact.
extra=""
for arg in "$@"; do extra+=" $(printf '%q' "$arg")"; done
project_flag=""
[ -n "${PROJECT:-}" ] && project_flag="--project=$PROJECT"
branch="${BRANCH:-main}"
data_sync=""
if [ -n "${BUCKET:-}" ] && [ -n "${DATA_LOCAL:-}" ]; then
  data_sync="mkdir -p $DATA_LOCAL && gsutil -m rsync -r $BUCKET/data $DATA_LOCAL"
fi
read -r -d '' remote <<REMOTE || true
set -euo pipefail
if [ -d xmae-jax/.git ]; then git -C xmae-jax fetch -q origin && git -C xmae-jax checkout -q $branch && git -C xmae-jax pull -q; else git clone -q -b $branch $REPO_URL xmae-jax; fi
cd xmae-jax
PYTHON=${PYTHON:-python3} JAX_EXTRA=tpu bash launch/setup_env.sh train
$data_sync
.venv/bin/python -m xmae_jax.cli.xmae_train --config $config --workdir $workdir$extra
REMOTE
if [ "$dry_run" = 1 ]; then
  echo "gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE $project_flag --worker=all --command=<below>"
  # Every worker runs the same script; the trainer tells them apart by the TPU environment
  # (TPU_WORKER_ID), which jax.distributed.initialize() reads.
  for ((w = 0; w < ${WORKERS:-1}; w++)); do
    while IFS= read -r line; do
      [ -n "$line" ] && echo "worker $w: $line"
    done <<< "$remote"
  done
  exit 0
fi
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $project_flag --worker=all \
  --command="$remote"
