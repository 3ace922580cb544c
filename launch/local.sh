#!/usr/bin/env bash
# One process on this machine (all its local devices: CPU, or the GPUs/TPU chips it has).
#   bash launch/local.sh CONFIG WORKDIR [extra flags...]
#   bash launch/local.sh configs/xmae.py:demo runs/demo --config.data.dir=data/synthetic
# Rerunning the same command resumes from WORKDIR's latest checkpoint.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
py="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
exec "$py" -m xmae_jax.cli.xmae_train --config "$config" --workdir "$workdir" "$@"
