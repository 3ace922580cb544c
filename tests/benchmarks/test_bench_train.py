"""`bench train` reports what the compiled step says: FLOPs from its cost analysis, a throughput
that follows from the step times, and one valid JSON line."""
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
  bench = train_bench.build_step(config, batch_size=4)
  times = bench.run(3)
  return bench, times


def test_record_flops_and_throughput_follow_the_compiled_step(tiny_bench):
  bench, times = tiny_bench
  record = train_bench.summarize(bench, times, 1e9, dtype="float32", warmup=0,
                                 device_kind="cpu")
  cost = bench.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert record["flops_per_step"] == pytest.approx(float(cost["flops"]) * bench.mesh.size)
  assert record["flops_per_step"] > 0
  assert record["step_time_median_s"] == pytest.approx(common.median(times))
  assert record["segments_per_s"] == pytest.approx(4 / record["step_time_median_s"])
  assert record["achieved_flops_per_s"] == pytest.approx(
      record["flops_per_step"] / record["step_time_median_s"])
  assert record["mfu"] == pytest.approx(record["achieved_flops_per_s"] / 1e9)
  assert len(bench.cpu_times) == len(times) == 3
  # Donated state: the step keeps running on its own outputs without recompiling.
  assert int(bench.state["step"]) == 3


def test_record_is_one_json_line(tiny_bench):
  bench, times = tiny_bench
  stream = io.StringIO()
  common.emit(train_bench.summarize(bench, times, None, dtype="float32", warmup=0,
                                    device_kind="cpu"), stream)
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1
  parsed = json.loads(lines[0])
  assert parsed["mfu"] is None and parsed["batch_size"] == 4
  assert parsed["memory"]["step_peak_estimate"] >= parsed["memory"]["temp_size"]


def test_bad_config_path_is_one_clear_error(tmp_path):
  with pytest.raises(train_bench.BenchConfigError, match="does not exist"):
    train_bench.load_config(str(tmp_path / "missing.py"))
