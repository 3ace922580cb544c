#!/usr/bin/env bash
# The benchmarks on one accelerator in one go (about 10 minutes on one GPU), one JSON file out.
#
#   bash launch/accelerator_bench.sh [--reference PATH/TO/xMAE] [--output FILE]
#
# Parts, each bounded by `timeout` (a failed or timed-out part is recorded, the others still run):
#   install    a fresh venv ($VENV, default $TMPDIR/xmae_accel_venv) with this package, the
#              pinned set of constraints.txt and jax[cuda12] at the pinned jax version (plus
#              torch at its pinned version when --reference is given). Offline machines: set
#              pip's own PIP_NO_INDEX=1 PIP_FIND_LINKS=WHEELHOUSE. XMAE_BENCH_PYTHON=PY skips
#              the install and uses that interpreter.
#   train      `python -m xmae_jax.benchmarks train` (the paper preset) in bfloat16 and float32 at
#              each batch size of $BATCHES (default "1024 4096": large enough to keep the
#              device busy; an out-of-memory batch is a failed part, not the end of the script).
#   reference  `python -m xmae_jax.benchmarks reference` against the reference PyTorch code at
#              --reference on the same device, when that benchmark can run torch there (torch
#              with CUDA importable and the benchmark offering --device); skipped with the
#              reason otherwise, and always without --reference.
#   data       `python -m xmae_jax.benchmarks data` (the input pipeline on this host's CPUs).
# Output: FILE (default $OUT/accelerator_bench.json, else ./accelerator_bench.json): the
# machine, the versions, and per part its command, exit status, seconds and JSON records.
#
# XMAE_BENCH_SMOKE=1: the same script with tiny sizes on whatever JAX this machine has (CPU),
# no install, so a broken script is caught by tests (tests/launch/test_accelerator_bench.py).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reference=""
output="${OUT:-.}/accelerator_bench.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --reference) reference="${2:?--reference needs a path}"; shift 2 ;;
    --output) output="${2:?--output needs a path}"; shift 2 ;;
    *) echo "usage: $0 [--reference PATH/TO/xMAE] [--output FILE]" >&2; exit 2 ;;
  esac
done
if [ -n "$reference" ] && [ ! -d "$reference" ]; then
  echo "$0: --reference $reference is not a directory" >&2
  exit 2
fi

smoke="${XMAE_BENCH_SMOKE:-0}"
if [ "$smoke" = "1" ]; then
  config="configs/xmae.py:tiny"; batches="${BATCHES:-8}"; steps=2; warmup=1; peak=256
  # Up to one Grain worker and one read thread: each path once, not every combination.
  data_args=(--make-synthetic 64 --batch-size 16 --steps 3 --workers 0,1 --read-threads 0,1)
  ref_args=(--batch-size 8 --steps 1 --rounds 1 --warmup 1 --peak-size 256)
  t_install=60; t_train=240; t_reference=240; t_data=120
else
  config="configs/xmae.py"; batches="${BATCHES:-1024 4096}"; steps=10; warmup=3; peak=8192
  data_args=(--make-synthetic 20000 --batch-size 1024 --steps 50)
  ref_args=(--batch-size 256 --steps 5 --rounds 2 --warmup 2 --peak-size 8192)
  t_install=240; t_train=75; t_reference=120; t_data=60
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/xmae_accel_bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
parts="$work/parts"; mkdir -p "$parts"
cd "$root"

# run NAME SECONDS CMD...: runs CMD under `timeout`, keeps its output, exit status and seconds.
run() {
  local name="$1" limit="$2"; shift 2
  echo "== $name (at most ${limit}s): $*" >&2
  local start end rc
  start=$(date +%s.%N)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$parts/$name.out" 2>"$parts/$name.err"
  rc=$?
  end=$(date +%s.%N)
  printf '%s\n' "$*" >"$parts/$name.cmd"
  printf '%s %s %s\n' "$rc" "$start" "$end" >"$parts/$name.rc"
  [ "$rc" = 0 ] || { echo "   $name: exit status $rc" >&2; tail -n 3 "$parts/$name.err" >&2; }
  return 0
}

# skip NAME REASON: records a part that did not run.
skip() {
  echo "== $1 skipped: $2" >&2
  printf '%s\n' "$2" >"$parts/$1.skipped"
}

# --- install ------------------------------------------------------------------------------------
py="${XMAE_BENCH_PYTHON:-}"
if [ -z "$py" ] && [ "$smoke" = "1" ]; then
  py="${PYTHON:-$root/.venv/bin/python}"
fi
if [ -z "$py" ]; then
  venv="${VENV:-${TMPDIR:-/tmp}/xmae_accel_venv}"
  jax_version="$(sed -n 's/^jax==//p' "$root/constraints.txt")"
  torch_version="$(sed -n 's/^torch==//p' "$root/constraints.txt")"
  extra=()
  [ -n "$reference" ] && extra+=("torch==$torch_version")
  run install "$t_install" bash -c '
    set -e
    python3 -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q -c "$2/constraints.txt" -e "$2[train]" "jax[cuda12]==$3" "${@:4}"
  ' install "$venv" "$root" "$jax_version" "${extra[@]}"
  py="$venv/bin/python"
  if [ "$(cut -d' ' -f1 "$parts/install.rc")" != 0 ]; then
    echo "install failed; continuing with whatever $py can import" >&2
  fi
fi
export JAX_COMPILATION_CACHE_DIR="$work/xla_cache" TF_CPP_MIN_LOG_LEVEL=2

# --- train: bf16 and f32 at each batch size -----------------------------------------------------
for dtype in bfloat16 float32; do
  for b in $batches; do
    run "train_${dtype}_b${b}" "$t_train" "$py" -m xmae_jax.benchmarks train --config "$config" \
      --batch-size "$b" --dtype "$dtype" --steps "$steps" --warmup "$warmup" --peak-size "$peak"
  done
done

# --- reference: same device, when the benchmark can put torch there ----------------------------
if [ -z "$reference" ]; then
  skip reference "no --reference PATH/TO/xMAE given"
else
  device="$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo none)"
  if [ "$device" = none ]; then
    skip reference "torch is not importable by $py"
  elif [ "$smoke" = "1" ]; then
    run reference "$t_reference" "$py" -m xmae_jax.benchmarks reference \
      --reference-repo "$reference" --config "$config" --dtype float32 "${ref_args[@]}"
  elif [ "$device" != cuda ]; then
    skip reference "torch has no CUDA device here: not a same-device comparison"
  elif ! "$py" -m xmae_jax.benchmarks reference --help 2>/dev/null | grep -q -- "--device"; then
    skip reference "bench reference runs torch on the CPU only (it has no --device option)"
  else
    for dtype in bfloat16 float32; do
      run "reference_${dtype}" "$t_reference" "$py" -m xmae_jax.benchmarks reference \
        --reference-repo "$reference" --config "$config" --dtype "$dtype" --device cuda "${ref_args[@]}"
    done
  fi
fi

# --- data ----------------------------------------------------------------------------------------
run data "$t_data" "$py" -m xmae_jax.benchmarks data "${data_args[@]}"

# --- one JSON file -------------------------------------------------------------------------------
mkdir -p "$(dirname "$output")"
collector="${py}"
"$collector" -c 'import json' 2>/dev/null || collector=python3
"$collector" - "$parts" "$output" "$smoke" "$config" "$batches" <<'EOF'
import json, os, platform, subprocess, sys, time
from pathlib import Path

parts_dir, output, smoke, config, batches = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def records(text):
  out = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        out.append(json.loads(line))
      except ValueError:
        pass
  return out

def gpus():
  try:
    return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=30).stdout.strip().splitlines()
  except (OSError, subprocess.SubprocessError):
    return []

parts = {}
for f in sorted(parts_dir.iterdir()):
  name = f.name.rsplit(".", 1)[0]
  if f.suffix == ".skipped":
    parts[name] = {"skipped": f.read_text().strip()}
  elif f.suffix == ".rc":
    rc, start, end = f.read_text().split()
    err = (parts_dir / f"{name}.err").read_text(errors="replace")
    parts[name] = {"command": (parts_dir / f"{name}.cmd").read_text().strip(),
                   "exit_status": int(rc), "timed_out": int(rc) in (124, 137),
                   "seconds": round(float(end) - float(start), 2),
                   "records": records((parts_dir / f"{name}.out").read_text(errors="replace"))}
    if int(rc) != 0:
      parts[name]["stderr_tail"] = err[-2000:]
result = {"bench": "accelerator", "smoke": smoke == "1", "config": config,
          "batch_sizes": [int(b) for b in batches.split()],
          "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "host": platform.node(), "cpu_count": os.cpu_count(), "gpus": gpus(), "parts": parts}
from xmae_jax import atomic   # the working directory is the repository root
atomic.atomic_write(output, json.dumps(result, indent=1))
print(f"wrote {output}: " + ", ".join(
    f"{k} {'skipped' if 'skipped' in v else ('ok' if v['exit_status'] == 0 else 'FAILED')}"
    for k, v in parts.items()), file=sys.stderr)
EOF
