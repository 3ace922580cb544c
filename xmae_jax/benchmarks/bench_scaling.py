"""Train-step scaling over fake CPU devices: `python -m xmae_jax.benchmarks.bench_scaling`.

  python -m xmae_jax.benchmarks.bench_scaling --config configs/xmae.py:tiny --devices 1,2,4,8 \
      --global-batch 32 --per-device-batch 8 --steps 4 [--markdown]

Each point runs in its own subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N`
(a process fixes its device count when JAX starts) and times the trainer's compiled step
(`xmae_jax.benchmarks.bench_train.build_step`) on the mesh the config describes:

  strong  the global batch is fixed (`--global-batch`), split over N devices;
  weak    the batch per device is fixed (`--per-device-batch`), global = N x that;
  replicated  mesh data=N (parameters and AdamW state copied on every device, the default);
  fsdp        mesh fsdp=N with the rule (".*", "fsdp"): each parameter and its optimizer state
              sharded along its largest dimension divisible by N (big_vision's rule).

Fake devices share this machine's cores, so the times show the cost of partitioning and of the
collectives XLA inserts, not a speed-up; memory per device (`memory_analysis()` of the
per-device program) is exact. Prints one JSON line per point (and a markdown table with
`--markdown`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax

from xmae_jax.benchmarks import bench_common as common
from xmae_jax.benchmarks import bench_train as train_bench

PLACEMENTS = ("replicated", "fsdp")
MODES = ("strong", "weak")


def mesh_for(config, placement: str):
  """Sets `config.mesh` for `placement` over all devices."""
  if placement == "replicated":
    config.mesh.axes = (("data", -1), ("fsdp", 1))
    config.mesh.param_rules = ((".*", "replicate"),)
  elif placement == "fsdp":
    config.mesh.axes = (("data", 1), ("fsdp", -1))
    config.mesh.param_rules = ((".*", "fsdp"),)
  else:
    raise ValueError(f"placement {placement!r}: expected one of {PLACEMENTS}")
  return config


def run_point(config_spec: str, batch: int, placement: str, steps: int, warmup: int) -> dict:
  """One point, in this process (its device count is already fixed)."""
  config = mesh_for(train_bench.load_config(config_spec), placement)
  bench = train_bench.build_step(config, batch)
  bench.run(warmup)
  bench.cpu_times.clear()
  times = bench.run(steps)
  record = train_bench.summarize(
      bench, times, None, dtype="float32", warmup=warmup, device_kind=jax.devices()[0].device_kind
  )
  record.update(
      bench="scaling",
      placement=placement,
      num_devices=jax.device_count(),
      batch_per_device=batch // jax.device_count(),
  )
  return record


def spawn_point(
    config_spec: str,
    devices: int,
    batch: int,
    placement: str,
    steps: int,
    warmup: int,
    timeout: float,
) -> dict:
  env = dict(os.environ)
  flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [
      sys.executable,
      "-m",
      "xmae_jax.benchmarks.bench_scaling",
      "--point",
      "--config",
      config_spec,
      "--batch",
      str(batch),
      "--placement",
      placement,
      "--steps",
      str(steps),
      "--warmup",
      str(warmup),
  ]
  try:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {
        "bench": "scaling",
        "num_devices": devices,
        "placement": placement,
        "batch_size": batch,
        "error": f"timed out after {timeout:.0f} s",
    }
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {
        "bench": "scaling",
        "num_devices": devices,
        "placement": placement,
        "batch_size": batch,
        "error": tail,
    }
  return json.loads(lines[-1])


def plan(
    devices: list[int],
    global_batch: int,
    per_device_batch: int,
    modes: list[str],
    placements: list[str],
) -> list[tuple[str, str, int, int]]:
  """(mode, placement, devices, global batch) for every point; weak FSDP is left out (the
  strong rows already show what FSDP costs), which keeps the run short on a small machine."""
  points = []
  for mode in modes:
    for placement in placements:
      if mode == "weak" and placement == "fsdp" and "replicated" in placements:
        continue
      for n in devices:
        batch = global_batch if mode == "strong" else per_device_batch * n
        if batch % n:
          continue
        points.append((mode, placement, n, batch))
  return points


def markdown(rows: list[dict]) -> str:
  head = (
      "| mode | placement | devices | global batch | batch/device | step median (s) | "
      "segments/s | cpu s/step | args/device (MB) | temp/device (MB) | "
      "peak est./device (MB) |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|"
  )
  out = [head]
  for r in rows:
    if "error" in r:
      out.append(
          f"| {r.get('mode', '')} | {r['placement']} | {r['num_devices']} | "
          f"{r['batch_size']} | | error: {r['error']} | | | | | |"
      )
      continue
    m = r["memory"]
    out.append(
        f"| {r['mode']} | {r['placement']} | {r['num_devices']} | {r['batch_size']} | "
        f"{r['batch_per_device']} | {r['step_time_median_s']:.3f} | {r['segments_per_s']:.1f} | "
        f"{r['cpu_time_median_s']:.2f} | {m['argument_size'] / 1e6:.1f} | "
        f"{m['temp_size'] / 1e6:.1f} | {m['step_peak_estimate'] / 1e6:.1f} |"
    )
  return "\n".join(out)


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="python -m xmae_jax.benchmarks.bench_scaling",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--config", default="configs/xmae.py:tiny")
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated fake device counts")
  p.add_argument("--global-batch", type=int, default=32, help="strong scaling: global batch")
  p.add_argument("--per-device-batch", type=int, default=8, help="weak scaling: batch/device")
  p.add_argument("--modes", default="strong,weak")
  p.add_argument("--placements", default="replicated,fsdp")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--timeout", type=float, default=1200.0, help="seconds per point")
  p.add_argument("--markdown", action="store_true", help="also print a markdown table")
  # One point in this process (used by the parent through a subprocess).
  p.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  p.add_argument("--placement", choices=PLACEMENTS, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.modes = [m for m in args.modes.split(",") if m]
  args.placements = [m for m in args.placements.split(",") if m]
  bad = [m for m in args.modes if m not in MODES] + [
      m for m in args.placements if m not in PLACEMENTS
  ]
  if bad:
    p.error(f"unknown mode/placement {bad}; modes {MODES}, placements {PLACEMENTS}")
  try:
    args.devices = [int(d) for d in args.devices.split(",") if d]
  except ValueError:
    p.error(f"--devices {args.devices!r}: expected comma-separated integers")
  if min(args.devices + [args.global_batch, args.per_device_batch, args.steps]) <= 0:
    p.error("device counts, batches and --steps must be positive")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.point:
    common.emit(run_point(args.config, args.batch, args.placement, args.steps, args.warmup))
    return
  rows = []
  for mode, placement, n, batch in plan(
      args.devices, args.global_batch, args.per_device_batch, args.modes, args.placements
  ):
    row = spawn_point(args.config, n, batch, placement, args.steps, args.warmup, args.timeout)
    row["mode"] = mode
    common.emit(row)
    rows.append(row)
  if args.markdown:
    print(markdown(rows))


if __name__ == "__main__":
  main()
