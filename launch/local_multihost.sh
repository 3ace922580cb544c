#!/usr/bin/env bash
# Simulates a multi-host job on one machine: N local CPU processes, each with D fake devices,
# joined with jax.distributed (gloo collectives), i.e. the code path of a TPU pod or a GPU
# cluster. Each process reads its own rows of every global batch; process 0 writes the logs.
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 bash launch/local_multihost.sh CONFIG WORKDIR [flags...]
# Losses equal those of a single-process run of the same config (the topology does not matter).
# Rerunning the same command resumes (the compilation cache stays on). If a process dies, the
# others end within about a minute with one line naming it; the exit status is then non-zero.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
n="${NUM_PROCESSES:-2}"
d="${DEVICES_PER_PROCESS:-2}"
port="${PORT:-$((20000 + RANDOM % 20000))}"
py="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
mkdir -p "$workdir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < n; i++)); do
  log="$workdir/process_$i.log"
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
    "$py" -m xmae_jax.cli.xmae_train --config "$config" --workdir "$workdir" \
      --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@" \
      > >(if [ "$i" = 0 ]; then tee "$log"; else cat > "$log"; fi) 2>&1 &
  pids+=("$!")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit "$status"
