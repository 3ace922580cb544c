"""`python -m xmae_jax.benchmarks train`: speed of the real jitted train step.

  python -m xmae_jax.benchmarks train --config configs/xmae.py --batch-size 64 --steps 20
  python -m xmae_jax.benchmarks train --config configs/xmae.py:tiny --batch-size 8 --dtype bfloat16

Builds the trainer's own step (`xmae_jax.training.state.make_train_step`: masking, loss,
gradient, AdamW update, NaN guard; state donated, explicit shardings on the config's mesh),
compiles it once (`lower().compile()`, so the timed calls cannot recompile), and times it on a
device-resident synthetic batch. Prints one JSON line:

  segments_per_s      batch / median step time
  step_time_median_s  median wall time of one step after compilation (each step synchronized)
  compile_s           lower + compile time
  flops_per_step      the compiled step's `cost_analysis()["flops"]`
  achieved_flops_per_s, matmul_peak_flops_per_s (an n^3 XLA matmul in the compute dtype, best
                      of runs before and after the timing, same process) and their ratio `mfu`
  memory              `memory_analysis()` of the compiled step and the process's peak RSS
  state_layout        the train state's layout the step ran on ("buffers" or "tree",
                      `training.state.state_layout`; `--state-layout` chooses)
  host_overhead_ms    median host wall time of calling a jitted no-op (state, batch) -> (state,
                      metrics) with the state donated, on the step's own state, batch and metric
                      shapes: what each step call costs the host whatever the device; with
                      `state_leaves`; and the same for both layouts
                      (`host_overhead_buffers_ms`, `state_leaves_buffers`, `..._tree...`)

Benchmarks measure; they do not assert.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmae_jax import config_lib
from xmae_jax import errors
from xmae_jax.benchmarks import bench_common as common
from xmae_jax.data import preprocess
from xmae_jax.training import perf


class BenchConfigError(errors.XmaeError):
  """A benchmark config or size that cannot run."""


def load_config(spec: str):
  """`config_lib.load(spec)`, its errors as this benchmark's (benchmarks/reference.py and
  scaling.py catch BenchConfigError)."""
  try:
    return config_lib.load(spec)
  except config_lib.ConfigError as e:
    raise BenchConfigError(str(e)) from None


def synthetic_batch(batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Quasi-periodic PPG/ECG-like float32 waveforms, min-max scaled to [-1, 1] per segment.

  Speed does not depend on the values (no data-dependent control flow in the step), but
  realistic ranges keep the loss finite, so the NaN guard takes the normal path.
  """
  rng = np.random.default_rng(seed)
  t = np.arange(seq_len, dtype=np.float32) / 100.0
  rate = rng.uniform(0.8, 2.0, size=(batch_size, 1)).astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, size=(batch_size, 1)).astype(np.float32)
  ppg = np.sin(2 * np.pi * rate * t + phase) + 0.05 * rng.standard_normal((batch_size, seq_len))
  ecg = np.sin(2 * np.pi * rate * t + phase) ** 15 + 0.05 * rng.standard_normal(
      (batch_size, seq_len)
  )

  return {
      "ppg": preprocess.minmax(ppg, axis=1).astype(np.float32),
      "ecg": preprocess.minmax(ecg, axis=1).astype(np.float32),
  }


def time_noop_calls(state, batch, metrics, shardings, calls: int, warmup: int = 10):
  """(host seconds of each call, the state) of a jitted no-op `(state, batch) -> (state,
  metrics)` with the state donated: the host's part of a step call (flattening the arguments,
  donating and unflattening the outputs), the same on every device since nothing runs.

  `metrics`: ShapeDtypeStructs of the step's outputs besides the state; `shardings`: (state,
  batch, metrics) shardings. Each call is timed until it returns and then waited for, so calls
  do not queue behind one another.
  """
  state_sh, batch_sh, metric_sh = shardings
  noop = jax.jit(
      lambda s, b: (s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)),
      in_shardings=(state_sh, batch_sh),
      out_shardings=(state_sh, metric_sh),
      donate_argnums=0,
  )
  times = []
  for i in range(warmup + calls):
    start = time.perf_counter()
    state, out = noop(state, batch)
    if i >= warmup:
      times.append(time.perf_counter() - start)
    jax.block_until_ready((state, out))
  return times, state


@dataclasses.dataclass
class StepBench:
  """The trainer's compiled step, its state and a device-resident batch, ready to time."""

  config: Any
  mesh: Any
  compiled: Any
  state: Any
  batch: dict
  compile_s: float
  state_sh: Any = None
  batch_sh: Any = None
  tx: Any = None
  flat: bool = True  # the state's layout: buffers (True) or nested dicts

  cpu_times: list = dataclasses.field(default_factory=list)
  dispatch_times: list = dataclasses.field(default_factory=list)

  def run(self, steps: int) -> list[float]:
    """Wall seconds of `steps` synchronized steps (the state is donated and carried on); the
    process CPU seconds of each go to `cpu_times`."""

    def step():
      start = time.perf_counter()
      self.state, out = self.compiled(self.state, self.batch)
      # Host time until the call returns (the computation runs asynchronously): the per-step
      # overhead an accelerator would see (flattening the state pytree of arrays).
      self.dispatch_times.append(time.perf_counter() - start)
      return out

    with jax.set_mesh(self.mesh):
      return common.time_calls(step, jax.block_until_ready, steps, self.cpu_times)

  def host_overhead(self, calls: int = 200, *, flat: bool | None = None) -> tuple[list[float], int]:
    """(host seconds of each call of a no-op with this step's signature (`time_noop_calls`),
    state leaves) on this step's state; `flat` other than the step's layout: on an initial state
    of that layout, built here."""
    own = flat is None or flat == self.flat
    metrics = self.compiled.out_info[1]
    with jax.set_mesh(self.mesh):
      state_sh, state = (
          (self.state_sh, self.state)
          if own
          else initial_state(self.config, self.mesh, self.tx, flat=flat)
      )
      times, state = time_noop_calls(
          state,
          self.batch,
          metrics,
          (state_sh, self.batch_sh, jax.tree.map(lambda m: m.sharding, metrics)),
          calls,
      )
    if own:
      self.state = state
    return times, len(jax.tree.leaves(state))

  def flops(self) -> float:
    cost = self.compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
      cost = cost[0]
    return float(cost["flops"])

  def memory(self) -> dict:
    stats = self.compiled.memory_analysis()
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {f.removesuffix("_in_bytes"): int(getattr(stats, f)) for f in fields}
    # Live at once: arguments + outputs not aliased to (donated) arguments + temporaries.
    out["step_peak_estimate"] = (
        out["argument_size"] + out["output_size"] - out["alias_size"] + out["temp_size"]
    )
    return out


def build_step(
    config,
    batch_size: int,
    dtype: str = "float32",
    total_steps: int = 10_000,
    data_seed: int = 0,
    *,
    flat: bool | None = None,
) -> StepBench:
  """Compiles the trainer's train step for `config` at `batch_size` in `dtype`.

  Uses the trainer's pieces unchanged (state layout, optimizer and schedule, sharding rules,
  the step function), so what is timed is what `xmae-train` runs. `flat`: the state's
  parameters as buffers (True) or nested dicts (False); None: the trainer's choice
  (`training.state.state_layout`).
  """
  # The training modules load Flax and Orbax, which takes a while: only building the step needs
  # them, not `python -m xmae_jax.benchmarks train --help` nor the benchmarks importing this
  # module.
  from xmae_jax.training import optim
  from xmae_jax.training import sharding
  from xmae_jax.training import state as state_lib

  config = config.copy_and_resolve_references()
  with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
    config.train.batch_size = int(batch_size)
    config.train.compute_dtype = dtype
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh, config.mesh)
  if batch_size % dp:
    raise BenchConfigError(
        f"batch size {batch_size} is not divisible by the data-parallel "
        f"size {dp} (mesh {dict(mesh.shape)})"
    )
  if flat is None:
    try:
      flat = state_lib.state_layout(config, mesh) == "buffers"
    except state_lib.StateError as e:
      raise BenchConfigError(str(e)) from None
  tx, schedule = optim.make_optimizer(config.train, total_steps)
  batch_sh = sharding.batch_sharding(mesh, config.mesh)
  host = synthetic_batch(batch_size, int(config.model.seq_len), data_seed)
  with jax.set_mesh(mesh):
    state_sh, state = initial_state(config, mesh, tx, flat=flat)
    batch = {k: jax.device_put(v, batch_sh) for k, v in host.items()}
    step = state_lib.jit_train_step(
        state_lib.model_graphdef(config),
        tx,
        schedule,
        config,
        None,
        state_sh,
        batch_sh,
        sharding.replicated(mesh),
    )
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
  return StepBench(config, mesh, compiled, state, batch, compile_s, state_sh, batch_sh, tx, flat)


def initial_state(config, mesh, tx, *, flat: bool):
  """(shardings, state): the trainer's initial train state (`training.state`) on `mesh`."""
  # Loads Flax and Orbax: see build_step.
  from xmae_jax.training import state as state_lib

  init = state_lib.init_fn(config, tx, mesh, flat=flat)
  state_sh = state_lib.state_shardings(jax.eval_shape(init), mesh, config)
  return state_sh, jax.jit(init, out_shardings=state_sh)()


def measure(
    config,
    batch_size: int,
    steps: int,
    dtype: str = "float32",
    warmup: int = 2,
    peak_size: int = 2048,
    host_calls: int = 200,
) -> dict:
  """Builds, warms up and times the step; returns the JSON record."""
  peak_before = perf.matmul_peak(dtype, n=peak_size, repeats=5)
  bench = build_step(config, batch_size, dtype)
  bench.run(warmup)
  bench.cpu_times.clear()
  bench.dispatch_times.clear()
  times = bench.run(steps)
  peak = max(peak_before, perf.matmul_peak(dtype, n=peak_size, repeats=5))
  record = summarize(
      bench, times, peak, dtype=dtype, warmup=warmup, device_kind=jax.devices()[0].device_kind
  )
  record.update(host_record(bench, host_calls))
  return record


def host_record(bench: StepBench, calls: int) -> dict:
  """`state_layout`, `host_overhead_ms` and `state_leaves` of the step's state, and both for
  each layout (`*_buffers`, `*_tree`)."""
  record = {"state_layout": "buffers" if bench.flat else "tree"}
  for flat, name in ((True, "buffers"), (False, "tree")):
    times, leaves = bench.host_overhead(calls, flat=flat)
    record[f"host_overhead_{name}_ms"] = 1e3 * common.median(times)
    record[f"state_leaves_{name}"] = leaves
  name = record["state_layout"]
  record["host_overhead_ms"] = record[f"host_overhead_{name}_ms"]
  record["state_leaves"] = record[f"state_leaves_{name}"]
  return record


def summarize(
    bench: StepBench,
    times: list[float],
    peak: float | None,
    *,
    dtype: str,
    warmup: int,
    device_kind: str,
) -> dict:
  """The JSON record of a timed step; `peak` None (not measured) leaves `mfu` None."""
  step_s = common.median(times)
  # cost_analysis() describes the per-device program; every device runs it.
  devices = int(bench.mesh.size)
  flops = bench.flops() * devices
  achieved = flops / step_s
  batch_size = int(bench.config.train.batch_size)
  return {
      "bench": "train",
      "impl": "xmae_jax",
      "model": bench.config.model.name,
      "preset": bench.config.get("preset", ""),
      "batch_size": batch_size,
      "dtype": dtype,
      "mesh": dict(bench.mesh.shape),
      "device_kind": device_kind,
      "segments_per_s": batch_size / step_s,
      "step_time_median_s": step_s,
      "step_time_min_s": min(times),
      "step_time_max_s": max(times),
      "cpu_time_median_s": common.median(bench.cpu_times) if bench.cpu_times else None,
      "dispatch_time_median_s": (
          common.median(bench.dispatch_times[-len(times) :]) if bench.dispatch_times else None
      ),
      "steps_timed": len(times),
      "warmup_steps": warmup,
      "compile_s": bench.compile_s,
      "flops_per_step": flops,
      "flops_per_device_step": flops / devices,
      "flops_per_segment": flops / batch_size,
      "achieved_flops_per_s": achieved,
      "matmul_peak_flops_per_s": peak,
      "mfu": achieved / peak if peak else None,
      "memory": bench.memory(),
      "peak_rss_bytes": common.peak_rss_bytes(),
      **common.machine_info(),
  }


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="python -m xmae_jax.benchmarks train",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      "--config",
      default="configs/xmae.py",
      help="config file[:preset[,key=value...]] (default: configs/xmae.py, paper)",
  )
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument(
      "--dtype",
      choices=("float32", "bfloat16"),
      default="float32",
      help="compute dtype (parameters stay float32)",
  )
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 peak matmul")
  p.add_argument(
      "--state-layout",
      choices=("auto", "buffers", "tree"),
      default=None,
      help="the train state's layout (default: the config's train.state_layout, "
      "auto: buffers on accelerators, tree on CPU)",
  )
  p.add_argument(
      "--host-calls",
      type=int,
      default=200,
      help="timed calls of the no-op step behind host_overhead_ms",
  )
  common.add_host_memory_flag(p)
  args = p.parse_args(argv)
  if args.batch_size <= 0 or args.steps <= 0 or args.warmup < 0 or args.host_calls <= 0:
    p.error("--batch-size, --steps and --host-calls must be positive, --warmup non-negative")
  return args


def main(argv=None):
  args = parse_args(argv)
  host_malloc_tuned = common.apply_host_memory_flag(args)  # before JAX starts its threads
  try:
    config = load_config(args.config)
    if args.state_layout is not None:
      with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        config.train.state_layout = args.state_layout
    record = measure(
        config,
        args.batch_size,
        args.steps,
        args.dtype,
        args.warmup,
        args.peak_size,
        args.host_calls,
    )
  except BenchConfigError as e:
    common.exit_with(str(e))
  record["host_malloc_tuned"] = host_malloc_tuned
  common.emit(record)


if __name__ == "__main__":
  main()
