"""`bench train` reports what the compiled step says: FLOPs from its cost analysis, a throughput
that follows from the step times, the host overhead of a no-op with the step's signature on the
step's state (a few buffers) and on nested dicts, and one valid JSON line."""

import io
import json
from pathlib import Path

import pytest

from xmae_jax.benchmarks import bench_common as common
from xmae_jax.benchmarks import bench_train as train_bench

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_bench():
  config = train_bench.load_config(str(REPO / "configs" / "xmae.py") + ":tiny")
  bench = train_bench.build_step(config, batch_size=4, flat=True)  # buffers (CPU's auto: tree)
  times = bench.run(3)
  return bench, times


def test_record_flops_and_throughput_follow_the_compiled_step(tiny_bench):
  bench, times = tiny_bench
  record = train_bench.summarize(bench, times, 1e9, dtype="float32", warmup=0, device_kind="cpu")
  cost = bench.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert record["flops_per_step"] == pytest.approx(float(cost["flops"]) * bench.mesh.size)
  assert record["flops_per_step"] > 0
  assert record["step_time_median_s"] == pytest.approx(common.median(times))
  assert record["segments_per_s"] == pytest.approx(4 / record["step_time_median_s"])
  assert record["achieved_flops_per_s"] == pytest.approx(
      record["flops_per_step"] / record["step_time_median_s"]
  )
  assert record["mfu"] == pytest.approx(record["achieved_flops_per_s"] / 1e9)
  assert len(bench.cpu_times) == len(times) == 3
  # Donated state: the step keeps running on its own outputs without recompiling.
  assert int(bench.state["step"]) == 3


def test_record_is_one_json_line(tiny_bench):
  bench, times = tiny_bench
  stream = io.StringIO()
  common.emit(
      train_bench.summarize(bench, times, None, dtype="float32", warmup=0, device_kind="cpu"),
      stream,
  )
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1
  parsed = json.loads(lines[0])
  assert parsed["mfu"] is None and parsed["batch_size"] == 4
  assert parsed["memory"]["step_peak_estimate"] >= parsed["memory"]["temp_size"]


def test_host_overhead_is_timed_on_the_steps_state_and_on_both_layouts(tiny_bench):
  bench, _ = tiny_bench
  step_before = int(bench.state["step"])
  record = train_bench.host_record(bench, calls=5)
  assert record["state_layout"] == "buffers"
  assert record["host_overhead_ms"] == record["host_overhead_buffers_ms"] > 0
  assert record["host_overhead_tree_ms"] > 0
  # Buffers (params, statistics, two Adam moments), Adam's and the schedule's counts, the step;
  # nested dicts: one leaf per parameter, statistic and moment (the paper preset's count).
  assert record["state_leaves"] == record["state_leaves_buffers"] == 7
  assert record["state_leaves_tree"] == 822
  # The no-op carries the donated state on: the step continues from it unchanged.
  assert int(bench.state["step"]) == step_before
  assert len(bench.run(1)) == 1 and int(bench.state["step"]) == step_before + 1


def test_bad_config_path_is_one_clear_error(tmp_path):
  with pytest.raises(train_bench.BenchConfigError, match="does not exist"):
    train_bench.load_config(str(tmp_path / "missing.py"))
