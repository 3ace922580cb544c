"""The trainer's exact train step compiled ahead for a TPU topology, on a machine without one.

`jax[tpu]`'s libtpu can describe a TPU slice (`jax.experimental.topologies.get_topology_desc`)
and hand out compile-only devices for it: a mesh over them, plus the step lowered on abstract
inputs (ShapeDtypeStructs with their shardings), compiles the same program a pod would run,
whose `memory_analysis()`, `cost_analysis()` and HLO text say before any TPU is rented whether
the state fits a chip's HBM, how long XLA expects a step to take, and which collectives each step
issues. The step is `training.state.jit_train_step` on `training.state`'s initial-state shapes and
shardings (`init_fn`, `state_shardings`): what `xmae-train` runs, nothing rebuilt.

Two pitfalls: the process must run with `JAX_PLATFORMS=cpu` (otherwise jax's TPU backend tries
to open a TPU and waits for one), and the step function is built outside `jax.set_mesh` of the
compile-only mesh (`make_train_step` makes an eager PRNG key on the default, CPU, device).

Projections are per chip: XLA's estimated step time (`cost_analysis()["optimal_seconds"]`, a
roofline estimate of the compiled program, not a measurement), segments/s per chip = the global
batch over that time over the chips, MFU = the compiled step's FLOPs per device over that time
over the chip's published bf16 peak (`CHIPS`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from xmae_jax import errors
from xmae_jax.training import optim
from xmae_jax.training import sharding
from xmae_jax.training import state as state_lib

GIB = 1024**3


class CompileError(errors.XmaeError):
  """A topology, mesh or batch that cannot be compiled, or a program that does not fit."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM per chip, dense bf16 peak per chip, chips per host (multi-host
  slices), and how libtpu's device kind names it."""

  name: str
  hbm_bytes: int
  bf16_peak: float
  chips_per_host: int
  device_kind: str


# Google Cloud TPU system architecture pages (per chip). The peaks are perf.BF16_PEAK_FLOPS's.
CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, 4, "TPU v4"),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 4, "TPU v5 lite"),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 4, "TPU v5"),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 4, "TPU v6 lite"),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def chip_of(topology: str) -> Chip:
  """The chip of a topology name `GEN:AxBxC` (e.g. v5p:2x2x1, v5e:4x4, v6e:16x16)."""
  gen, _, shape = topology.partition(":")
  if gen not in CHIPS or not re.fullmatch(r"\d+(x\d+)+", shape):
    raise CompileError(
        f"--topology {topology!r}: expected GEN:AxB[xC] with GEN one of "
        f"{', '.join(CHIPS)} (e.g. v5p:2x2x1, v5e:4x4, v6e:16x16)"
    )
  return CHIPS[gen]


def topology_devices(topology: str) -> list:
  """Compile-only devices of a TPU slice (needs libtpu; `JAX_PLATFORMS=cpu`)."""
  chip_of(topology)
  # jax.config holds its flags as attributes that mypy does not see.
  if jax.config.jax_platforms != "cpu":  # type: ignore[attr-defined]
    raise CompileError(
        f"--topology {topology}: compiling for a TPU topology needs jax on CPU "
        "(set JAX_PLATFORMS=cpu before jax starts)"
    )
  try:
    # Experimental, and needs libtpu: a jax without either is the one line below.
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
  except (ImportError, RuntimeError) as e:
    raise CompileError(
        f"--topology {topology}: libtpu cannot describe it "
        f"({str(e).splitlines()[0][:200]}); install jax[tpu]"
    ) from None


def abstract_batch(config, batch_size: int, batch_sh) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes of one global batch as the pipeline delivers it (pipeline.py: one float32
  (batch, segment) array per modality, int32 `subject` when `data.with_subject`)."""
  seq_len = int(config.model.get("seq_len", config.data.segment_length))
  out = {
      str(m): jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32, sharding=batch_sh)
      for m in config.data.modalities
  }
  if config.data.with_subject:
    out["subject"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sh)
  return out


@dataclasses.dataclass
class Compiled:
  """A compiled train step and what it was compiled for."""

  config: Any
  topology: str
  chip: Chip
  mesh: Any
  compiled: Any
  state_sh: Any
  abstract: Any
  batch_size: int
  compile_s: float  # lowering and compiling
  lower_s: float


def compile_step(config, topology: str, devices=None, compiler_options=None) -> Compiled:
  """`config`'s train step (its mesh, batch size, compute dtype, sharding rules) compiled for
  `topology` on compile-only devices (`devices`: those of `topology_devices`, if already made;
  `compiler_options`: XLA options, as `Lowered.compile` takes them)."""
  chip = chip_of(topology)
  devices = topology_devices(topology) if devices is None else devices
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except sharding.ShardingError as e:
    raise CompileError(f"--topology {topology} ({len(devices)} devices): {e}") from None
  batch_size = int(config.train.batch_size)
  dp = sharding.data_parallel_size(mesh, config.mesh)
  accum = max(1, int(config.train.grad_accum_steps))
  if batch_size % (dp * accum):
    raise CompileError(
        f"global batch {batch_size} is not divisible by the data-parallel size "
        f"{dp} x grad_accum_steps {accum} (mesh {dict(mesh.shape)})"
    )
  tx, schedule = optim.make_optimizer(config.train, int(config.train.num_steps) or 10_000)
  init = state_lib.init_fn(config, tx, mesh)
  abstract = jax.eval_shape(init)
  try:
    state_sh = state_lib.state_shardings(abstract, mesh, config)
  except sharding.ShardingError as e:
    raise CompileError(str(e)) from None
  batch_sh = sharding.batch_sharding(mesh, config.mesh)
  # Outside jax.set_mesh: make_train_step makes an eager PRNG key on the CPU device.
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
  args = (
      jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sh
      ),
      abstract_batch(config, batch_size, batch_sh),
  )
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = step.lower(*args)
    lower_s = time.perf_counter() - start
    try:
      compiled = lowered.compile(compiler_options)
    except jax.errors.JaxRuntimeError as e:
      first = str(e).strip().splitlines()[0]
      if "RESOURCE_EXHAUSTED" in first or "memory" in first.lower():
        raise CompileError(
            f"does not fit {topology} (mesh {dict(mesh.shape)}, global batch "
            f"{batch_size}): {first[:300]}"
        ) from None
      raise
  return Compiled(
      config,
      topology,
      chip,
      mesh,
      compiled,
      state_sh,
      abstract,
      batch_size,
      time.perf_counter() - start,
      lower_s,
  )


# --- What the compiled program says -------------------------------------------------------------

_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|c64|c128)\[([\d,]*)\]")
_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def shape_bytes(text: str) -> int:
  """Bytes of the array shapes in an HLO result type (a tuple's: summed)."""
  return sum(
      _BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
      for dt, dims in _SHAPE.findall(text)
  )


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of the collective ops in a compiled module's HLO text (an async
  pair counted once, by its start; bytes: its result shapes, for an async start the last
  element of its result tuple). Ops inside a loop body count once, not per iteration."""
  out = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if m is None:
      continue
    result, kind, is_start = m.group(1), m.group(2), m.group(3)
    if is_start and result.startswith("("):
      # (operands..., results...) of an async start: the output half.
      shapes = _SHAPE.findall(result)
      shapes = shapes[len(shapes) // 2 :] if len(shapes) > 1 else shapes
      nbytes = sum(
          _BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in shapes
      )
    else:
      nbytes = shape_bytes(result)
    out[kind]["count"] += 1
    out[kind]["bytes"] += nbytes
  return {k: dict(out[k]) for k in COLLECTIVES if k in out}


def memory(compiled) -> dict[str, int]:
  """Per-device bytes of the compiled program (`memory_analysis()`) and their live total:
  arguments + outputs not aliased to donated arguments + temporaries + code."""
  stats = compiled.memory_analysis()
  fields = ("argument", "output", "alias", "temp", "generated_code")
  out = {f: int(getattr(stats, f"{f}_size_in_bytes")) for f in fields}
  out["total"] = (
      out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  )
  return out


def cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def chips_of(topology: str) -> int:
  """Chips of a topology name (the product of its shape)."""
  return math.prod(int(d) for d in topology.partition(":")[2].split("x"))


def report(c: Compiled) -> dict:
  """The JSON record of a compiled step: per-chip HBM against capacity, FLOPs, XLA's estimated
  step time and what it projects (segments/s per chip and per host, MFU), collectives, compile
  time. Raises CompileError (one line) when the program does not fit a chip's HBM."""
  devices = list(c.mesh.devices.flat)
  chips = chips_of(c.topology)
  per_chip = max(1, len(devices) // chips)  # devices per chip (1 for megacore chips)
  hosts = len({d.process_index for d in devices})
  mem = {k: v * per_chip for k, v in memory(c.compiled).items()}
  check_fits(mem, c.chip, c.topology)
  costs = cost(c.compiled)
  flops = float(costs.get("flops", 0.0)) * per_chip or None
  step_s = float(costs["optimal_seconds"]) if costs.get("optimal_seconds", 0) > 0 else None
  seg_chip = c.batch_size / step_s / chips if step_s else None
  found = collectives(c.compiled.as_text())
  return {
      "config": f"{c.config.model.name}:{c.config.get('preset', '')}",
      "topology": c.topology,
      "chip": c.chip.name,
      "chips": chips,
      "devices": len(devices),
      "hosts": hosts,
      "mesh": {k: int(v) for k, v in c.mesh.shape.items()},
      "params": state_lib.num_params(c.abstract),
      "global_batch": c.batch_size,
      "batch_per_chip": c.batch_size / chips,
      "compute_dtype": str(c.config.train.compute_dtype),
      "hbm_per_chip": {**mem, "capacity": c.chip.hbm_bytes},
      "hbm_fraction": mem["total"] / c.chip.hbm_bytes,
      "flops_per_step_per_chip": flops,
      "xla_step_time_s": step_s,
      "segments_per_s_per_chip": seg_chip,
      "segments_per_s_per_host": seg_chip * chips / hosts if seg_chip else None,
      "mfu": (flops / step_s / c.chip.bf16_peak) if flops and step_s else None,
      "bf16_peak_per_chip": c.chip.bf16_peak,
      "collectives": found,
      "collectives_total": sum(v["count"] for v in found.values()),
      "compile_s": round(c.compile_s, 1),
      "lower_s": round(c.lower_s, 1),
  }


def check_fits(mem: dict[str, int], chip: Chip, topology: str) -> None:
  """Raises CompileError naming what does not fit a chip's HBM and by how much."""
  over = mem["total"] - chip.hbm_bytes
  if over > 0:
    raise CompileError(
        f"does not fit {topology}: {mem['total'] / GIB:.2f} GiB per chip (arguments "
        f"{mem['argument'] / GIB:.2f}, "
        f"outputs not aliased {(mem['output'] - mem['alias']) / GIB:.2f}, "
        f"temporaries {mem['temp'] / GIB:.2f}, code {mem['generated_code'] / GIB:.2f}) against "
        f"{chip.hbm_bytes / GIB:.0f} GiB of HBM: {over / GIB:.2f} GiB over; use a smaller "
        "--batch-size or a larger fsdp axis (--mesh data=N,fsdp=M)"
    )


def table(rec: dict) -> str:
  """The record as a small human-readable table."""
  gib = lambda b: f"{b / GIB:.3f} GiB"  # noqa: E731
  h = rec["hbm_per_chip"]
  fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
  rows = [
      ("config", f"{rec['config']} ({rec['params']:,} parameters, {rec['compute_dtype']})"),
      (
          "topology",
          f"{rec['topology']}: {rec['chips']} chips ({rec['devices']} devices), "
          f"{rec['hosts']} hosts",
      ),
      ("mesh", ", ".join(f"{k}={v}" for k, v in rec["mesh"].items())),
      ("global batch", f"{rec['global_batch']} ({rec['batch_per_chip']:g} per chip)"),
      (
          "HBM per chip",
          f"{gib(h['total'])} of {gib(h['capacity'])} " f"({100 * rec['hbm_fraction']:.1f}%)",
      ),
      ("  arguments", gib(h["argument"])),
      ("  outputs (not aliased)", gib(h["output"] - h["alias"])),
      ("  temporaries", gib(h["temp"])),
      ("  code", gib(h["generated_code"])),
      ("FLOPs per step per chip", fmt(rec["flops_per_step_per_chip"], ".4g")),
      (
          "XLA estimated step time",
          "n/a" if rec["xla_step_time_s"] is None else f"{1e3 * rec['xla_step_time_s']:.3f} ms",
      ),
      ("segments/s per chip", fmt(rec["segments_per_s_per_chip"], ",.0f")),
      ("segments/s per host", fmt(rec["segments_per_s_per_host"], ",.0f")),
      (
          "MFU (bf16 peak)",
          "n/a"
          if rec["mfu"] is None
          else f"{100 * rec['mfu']:.1f}% of {rec['bf16_peak_per_chip'] / 1e12:g} TFLOP/s",
      ),
  ]
  for kind, v in rec["collectives"].items():
    rows.append((f"{kind} per step", f"{v['count']} ops, {v['bytes'] / 2 ** 20:.2f} MiB"))
  rows.append(
      (
          "compile time",
          f"{rec['compile_s']:.1f} s (tracing and lowering " f"{rec['lower_s']:.1f} s)",
      )
  )
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
