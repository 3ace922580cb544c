"""The trainer's throughput accounting and device prefetch, piece by piece (no training run).

Peaks table and MFU, goodput shares, the metrics writer's nulls, the `train.profile_steps`
validation, and `DevicePrefetch`: batches arrive in order and placed, its state is that of the
next batch the loop consumes (not of the batches read ahead), set_state restarts the stream,
and errors of the producer reach the loop.
"""

import json
import threading
import types

import grain
import numpy as np
import pytest

from xmae_jax import config_lib
from xmae_jax.training import metrics as metrics_lib
from xmae_jax.training import perf
from xmae_jax.training import prefetch


@pytest.mark.parametrize(
    "kind,peak",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5e", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("TPU v6e", 918e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
    ],
)
def test_known_device_kinds_have_their_bf16_peak(kind, peak):
  assert perf.table_peak(kind) == peak
  device = types.SimpleNamespace(platform="gpu" if "NVIDIA" in kind else "tpu", device_kind=kind)
  got = perf.device_peak(device, "bfloat16", measure=lambda d: pytest.fail("measured"))
  assert got.flops_per_s == peak and got.source == "table"


def test_unknown_device_kind_gives_no_mfu_and_one_line_naming_it():
  device = types.SimpleNamespace(platform="gpu", device_kind="Mystery Accelerator 9000")
  peak = perf.device_peak(device, "bfloat16")
  assert peak.flops_per_s is None and peak.source == "unknown"
  line = peak.describe()
  assert "Mystery Accelerator 9000" in line and "\n" not in line
  assert perf.throughput(0.5, 1e12, peak) == {"tflops_per_device": 2.0, "mfu": None}


def test_cpu_peak_is_measured_in_the_compute_dtype():
  device = types.SimpleNamespace(platform="cpu", device_kind="cpu")
  seen = []
  peak = perf.device_peak(device, "bfloat16", measure=lambda d: seen.append(d) or 4e10)
  assert seen == ["bfloat16"] and peak.flops_per_s == 4e10 and peak.source == "measured"
  assert perf.throughput(0.25, 1e9, peak) == pytest.approx({"tflops_per_device": 4e-3, "mfu": 0.1})
  assert perf.matmul_peak("float32", n=64, repeats=1) > 0


def test_throughput_without_flops_is_null():
  assert perf.throughput(0.1, None, None) == {"tflops_per_device": None, "mfu": None}


def test_compiled_flops_of_a_jitted_matmul():
  import jax
  import jax.numpy as jnp

  x = jnp.ones((32, 32), jnp.float32)
  compiled = jax.jit(lambda a: a @ a).lower(x).compile()
  assert perf.compiled_flops(compiled) == pytest.approx(2 * 32**3, rel=0.01)

  class NoCost:

    def cost_analysis(self):
      raise NotImplementedError

  assert perf.compiled_flops(NoCost()) is None


def test_goodput_books_each_phase_and_the_shares_add_up_to_one():
  now = [0.0]
  goodput = perf.Goodput(clock=lambda: now[0])
  now[0] = 2.0
  goodput.end_init()  # 2 s of set-up
  for phase, seconds in [("compile", 3.0), ("data", 1.0), ("eval", 1.0), ("checkpoint", 0.5)]:
    with goodput.phase(phase):
      with goodput.phase("other"):  # nested: booked to the outer phase only
        now[0] += seconds
  now[0] += 2.5  # train steps: the rest
  shares = goodput.shares()
  assert shares == pytest.approx(
      {
          "goodput": 0.25,
          "badput_init": 0.2,
          "badput_compile": 0.3,
          "badput_data": 0.1,
          "badput_eval": 0.1,
          "badput_checkpoint": 0.05,
          "badput_other": 0.0,
      }
  )
  assert sum(shares.values()) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown goodput phase"):
    with goodput.phase("lunch"):
      pass


def test_metrics_writer_writes_unknown_values_as_null(tmp_path):
  writer = metrics_lib.MetricsWriter(tmp_path)
  writer.write(3, {"train_loss": 0.5, "mfu": None, "tflops_per_device": 1e-3})
  writer.close()
  row = json.loads((tmp_path / metrics_lib.METRICS_FILE).read_text())
  assert row == {"step": 3, "train_loss": 0.5, "mfu": None, "tflops_per_device": 1e-3}


# --- train.profile_steps validation ----------------------------------------------------------


def _config(**train):
  c = config_lib.base_config("tiny")
  return config_lib.apply_overrides(c, {f"train.{k}": v for k, v in train.items()})


@pytest.mark.parametrize(
    "window,num_steps,message",
    [
        ("(3, 3)", 20, "0 <= START < END"),
        ("(4, 2)", 20, "0 <= START < END"),
        ("(-1, 2)", 20, "0 <= START < END"),
        ("(2,)", 20, "0 <= START < END"),
        ("(2, 21)", 20, "past the run's last step (train.num_steps=20)"),
    ],
)
def test_bad_profile_window_is_one_line(window, num_steps, message):
  pattern = message.replace("(", r"\(").replace(")", r"\)")
  with pytest.raises(config_lib.ConfigError, match=pattern) as e:
    config_lib.validate(_config(profile_steps=window, num_steps=num_steps))
  assert "\n" not in str(e.value) and "train.profile_steps" in str(e.value)


def test_profile_window_defaults_off_and_a_good_one_passes():
  assert tuple(_config().train.profile_steps) == ()
  config_lib.validate(_config(profile_steps="(2, 4)", num_steps=20))
  # epoch runs: the trainer checks
  config_lib.validate(_config(profile_steps="(0, 100)", num_steps=0))
  with pytest.raises(config_lib.ConfigError, match="train.device_prefetch"):
    config_lib.validate(_config(device_prefetch=-1))


# --- DevicePrefetch --------------------------------------------------------------------------


def _host_iterator(n=10):
  return iter(grain.MapDataset.range(n).map(lambda i: {"x": np.full((2,), i)}).to_iter_dataset())


def _placed(batch):
  return {"placed": int(batch["x"][0]), "thread": threading.current_thread().name}


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetch_state_is_that_of_the_next_batch_the_loop_takes(depth):
  host = _host_iterator()
  batches = prefetch.DevicePrefetch(host, _placed, depth)
  assert batches.get_state() == host.get_state()
  got = [next(batches) for _ in range(3)]
  assert [b["placed"] for b in got] == [0, 1, 2]
  assert all((b["thread"] == "device-prefetch") == (depth > 0) for b in got)
  state = batches.get_state()
  # A fresh stream restored from it continues with batch 3, whatever was read ahead.
  again = prefetch.DevicePrefetch(_host_iterator(), _placed, depth)
  again.set_state(state)
  assert [next(again)["placed"] for _ in range(2)] == [3, 4]
  # set_state on a running prefetcher drops what it read ahead.
  batches.set_state(state)
  assert next(batches)["placed"] == 3
  batches.close()
  again.close()


def test_prefetch_saves_through_grains_checkpoint_handler(tmp_path):
  from grain._src.python.checkpoint import handler as grain_handler

  batches = prefetch.DevicePrefetch(_host_iterator(), _placed, 2)
  for _ in range(4):
    next(batches)
  grain_handler.CheckpointHandler().save(tmp_path, args=grain.checkpoint.CheckpointSave(batches))
  restored = prefetch.DevicePrefetch(_host_iterator(), _placed, 2)
  grain_handler.CheckpointHandler().restore(
      tmp_path, args=grain.checkpoint.CheckpointRestore(restored)
  )
  assert next(restored)["placed"] == 4
  batches.close()
  restored.close()


def test_prefetch_raises_the_producers_error_and_the_end_of_the_stream():
  def place(batch):
    if int(batch["x"][0]) == 2:
      raise RuntimeError("cannot place batch 2")
    return batch

  batches = prefetch.DevicePrefetch(_host_iterator(), place, 2)
  assert [int(next(batches)["x"][0]) for _ in range(2)] == [0, 1]
  with pytest.raises(RuntimeError, match="cannot place batch 2"):
    next(batches)
  short = prefetch.DevicePrefetch(_host_iterator(2), _placed, 2)
  assert [b["placed"] for b in short] == [0, 1]
  short.close()
