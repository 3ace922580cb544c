#!/usr/bin/env bash
# Cloud TPU pod slice (e.g. v5e-32, v5p-64): the same command on every worker VM.
#   TPU_NAME=my-pod ZONE=us-east5-a PROJECT=my-project \
#   REPO_URL=https://github.com/ORG/xmae-jax.git BUCKET=gs://my-bucket \
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
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: TPU_NAME=... ZONE=... [PROJECT=...] REPO_URL=... $0 CONFIG WORKDIR [flags...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO_URL:?set REPO_URL}"
config="$1"; workdir="$2"; shift 2
extra="$*"
project_flag=""
[ -n "${PROJECT:-}" ] && project_flag="--project=$PROJECT"
branch="${BRANCH:-main}"
data_sync=""
if [ -n "${BUCKET:-}" ] && [ -n "${DATA_LOCAL:-}" ]; then
  data_sync="mkdir -p $DATA_LOCAL && gsutil -m rsync -r $BUCKET/data $DATA_LOCAL &&"
fi
read -r -d '' remote <<REMOTE || true
set -euo pipefail
if [ -d xmae-jax/.git ]; then git -C xmae-jax fetch -q origin && git -C xmae-jax checkout -q $branch && git -C xmae-jax pull -q; else git clone -q -b $branch $REPO_URL xmae-jax; fi
cd xmae-jax
PYTHON=${PYTHON:-python3} JAX_EXTRA=tpu bash launch/setup_env.sh train
$data_sync
.venv/bin/python -m xmae_jax.cli.xmae_train --config $config --workdir $workdir $extra
REMOTE
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $project_flag --worker=all \
  --command="$remote"
