"""How well a run uses its devices: FLOPs per step, peak FLOP/s per device, MFU and goodput.

MFU (model FLOPs utilization) is the achieved FLOP/s per device over the device's peak:
  * FLOPs per step: the compiled train step's `cost_analysis()["flops"]`, which describes the
    per-device program (every device runs it), as `bench train` records it. XLA counts what the
    compiled program does, so rematerialization would count; a gradient-accumulation scan may
    be counted once per loop body rather than per iteration (XLA's cost analysis of a while
    loop), so MFU under `train.grad_accum_steps > 1` is a lower bound.
  * Peak: the dense bf16 matmul peak of the chip from a table of published numbers
    (`BF16_PEAK_FLOPS`, matched on `device.device_kind`), the denominator MaxText and the
    vendors use whatever the compute dtype; on CPU there is no published number per machine,
    so a short timed matmul in the compute dtype is measured at start (`matmul_peak`). An
    unknown device kind gives no peak: MFU is null in the logs, never an error.

Goodput (MaxText's term): the share of a run's wall time spent in train steps. The rest,
"badput", is split by cause: `init` (mesh, data, state creation or restore: the time before
the first step), `compile` (the train step's compilation, per curriculum variant), `data`
(the loop waiting for a batch: with device prefetch, the input pipeline not keeping up),
`eval` (validation and reconstruction figures, their compilation included), `checkpoint`
(the blocking part of a save; the writes are asynchronous) and `other` (profiler start and
stop). Train time is what is left, so the shares add up to 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from xmae_jax import paths

# (substrings of the lowercased device_kind, all present; dense bf16 FLOP/s of one chip).
# First match wins, so the more specific rows come first. Published dense (no sparsity) peaks:
# Google Cloud TPU system architecture pages, NVIDIA A100/H100/H200 datasheets.
BF16_PEAK_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("tpu", "v6 lite"), 918e12),  # v6e (Trillium) reports "TPU v6 lite"
    (("tpu", "v6e"), 918e12),
    (("tpu", "v5 lite"), 197e12),  # v5e reports "TPU v5 lite"
    (("tpu", "v5e"), 197e12),
    (("tpu", "v5p"), 459e12),
    (("tpu", "v5"), 459e12),  # v5p reports "TPU v5"
    (("tpu", "v4"), 275e12),
    (("h200",), 989e12),  # same tensor cores as H100 SXM
    (("h100", "pcie"), 756e12),
    (("h100", "nvl"), 835e12),
    (("h100",), 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (("a100",), 312e12),  # SXM and PCIe alike
)

GOODPUT_PHASES = ("init", "compile", "data", "eval", "checkpoint", "other")


def table_peak(device_kind: str) -> float | None:
  """The published dense bf16 peak FLOP/s of one chip of `device_kind`, or None if unknown."""
  kind = str(device_kind).lower()
  for parts, peak in BF16_PEAK_FLOPS:
    if all(p in kind for p in parts):
      return peak
  return None


def matmul_flops(n: int) -> float:
  """FLOPs of one n x n x n matrix multiply (a multiply and an add per term)."""
  return 2.0 * n**3


def matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 3) -> float:
  """Best FLOP/s of an n x n x n matmul compiled by XLA on the default device (one warm-up
  call first; the best call is the machine, slower ones measure its neighbours)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), dtype=jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (n, n), dtype=jnp.float32).astype(dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=x.dtype))
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return matmul_flops(n) / best


@dataclasses.dataclass(frozen=True)
class Peak:
  """The MFU denominator of one device: FLOP/s (None when unknown) and where it comes from."""

  device_kind: str
  flops_per_s: float | None
  source: str  # "table" (bf16, published), "measured" (CPU) or "unknown"

  def describe(self) -> str:
    if self.flops_per_s is None:
      return (
          f"device kind {self.device_kind!r} is not in the peak table "
          "(xmae_jax/training/perf.py): MFU is not reported"
      )
    what = "published bf16 peak" if self.source == "table" else "measured matmul peak"
    return (
        f"MFU against {self.flops_per_s / 1e12:.4g} TFLOP/s per device "
        f"({what}, {self.device_kind})"
    )


def device_peak(
    device, compute_dtype: str = "float32", measure: Callable[[str], float] = matmul_peak
) -> Peak:
  """The peak of `device`: the table's for known accelerators, measured on CPU, else None."""
  kind = str(getattr(device, "device_kind", "unknown"))
  if getattr(device, "platform", "") == "cpu":
    return Peak(kind, float(measure(compute_dtype)), "measured")
  peak = table_peak(kind)
  return Peak(kind, peak, "table" if peak is not None else "unknown")


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled program on one device (`cost_analysis`), or None when the
  backend reports none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it: no MFU, no failure
    return None
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def throughput(
    step_time_s: float, flops_per_device: float | None, peak: Peak | None
) -> dict[str, float | None]:
  """`tflops_per_device` and `mfu` of a step that took `step_time_s` (None where unknown)."""
  if flops_per_device is None or step_time_s <= 0:
    return {"tflops_per_device": None, "mfu": None}
  achieved = flops_per_device / step_time_s
  mfu = achieved / peak.flops_per_s if peak is not None and peak.flops_per_s else None
  return {"tflops_per_device": achieved / 1e12, "mfu": mfu}


class Goodput:
  """Wall time of a run by phase, from construction on (see the module docstring).

  `with goodput.phase("data"): ...` books the block's wall time to a badput cause; `shares()`
  gives `goodput` (train steps) and `badput_<cause>` as fractions of the time so far. Phases
  do not nest: an inner phase's time is booked to the outer one only.
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self.start = clock()
    self.seconds = dict.fromkeys(GOODPUT_PHASES, 0.0)
    self._active: str | None = None
    self._init_open = True

  def end_init(self) -> None:
    """The first step is about to run: the time so far is `init`."""
    if self._init_open:
      self.seconds["init"] += self._clock() - self.start
      self._init_open = False

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if name not in GOODPUT_PHASES:
      raise ValueError(f"unknown goodput phase {name!r}; one of {GOODPUT_PHASES}")
    if self._active is not None:
      yield
      return
    self._active = name
    start = self._clock()
    try:
      yield
    finally:
      self.seconds[name] += self._clock() - start
      self._active = None

  def shares(self) -> dict[str, float]:
    total = max(self._clock() - self.start, 1e-12)
    seconds = dict(self.seconds)
    if self._init_open:
      seconds["init"] += self._clock() - self.start
    bad = {f"badput_{k}": v / total for k, v in seconds.items()}
    return {"goodput": max(0.0, 1.0 - sum(bad.values())), **bad}


class ProfileWindow:
  """`train.profile_steps=(START, END)`: one `jax.profiler` trace of steps START+1..END under
  `directory` (WORKDIR/profile/, read by TensorBoard's profile plugin and XProf), on process 0.

  The loop calls `before(step)` with the number of steps done before running the next one and
  `after(step, out)` after it; the trace stops once step END's results are ready. A run
  resumed inside the window traces the rest of it; one resumed past it traces nothing.
  """

  def __init__(self, window: tuple[int, int] | None, directory, *, active: bool = True):
    self.window, self.directory = window, paths.path(directory)
    # The profiler writes local files: a trace for a gs:// workdir is uploaded when it stops.
    self._trace_dir = None if paths.is_remote(directory) else self.directory
    self.active = active and window is not None
    self.tracing = self.done = False

  def before(self, step: int) -> None:
    if self.active and not (self.tracing or self.done) and self.window[0] <= step < self.window[1]:
      if self._trace_dir is None:
        self._trace_dir = paths.staging_dir("xmae-profile-")
      self._trace_dir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self._trace_dir))
      self.tracing = True

  def after(self, step: int, result) -> None:
    if self.tracing and step >= self.window[1]:
      jax.block_until_ready(result)
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing, self.done = False, True
      if self._trace_dir != self.directory:
        paths.upload(self._trace_dir, self.directory)
