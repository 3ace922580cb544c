"""launch/accelerator_bench.sh in its smoke mode (XMAE_BENCH_SMOKE=1: tiny sizes, this machine's
JAX on CPU, no install), so a broken script is caught before it reaches an accelerator. Its
programs compile with XLA's fast-compile options: nothing here compares numbers, and compiling
the two train steps is most of the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import mp_util

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "accelerator_bench.sh"


def _run(*args, timeout=900):
  env = {
      **os.environ,
      **mp_util.FAST_COMPILE_ENV,
      "XMAE_BENCH_SMOKE": "1",
      "PYTHON": sys.executable,
      "JAX_PLATFORMS": "cpu",
  }
  return subprocess.run(
      ["bash", str(SCRIPT), *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def test_smoke_run_writes_one_json_with_every_part(tmp_path):
  out = tmp_path / "sub" / "bench.json"
  proc = _run("--output", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["bench"] == "accelerator" and result["smoke"] is True
  parts = result["parts"]
  assert set(parts) == {"train_bfloat16_b8", "train_float32_b8", "reference", "data"}
  assert "no --reference" in parts["reference"]["skipped"]
  for dtype in ("bfloat16", "float32"):
    part = parts[f"train_{dtype}_b8"]
    assert part["exit_status"] == 0 and not part["timed_out"], part.get("stderr_tail")
    (record,) = part["records"]
    assert record["bench"] == "train" and record["dtype"] == dtype and record["batch_size"] == 8
    assert record["segments_per_s"] > 0 and "--dtype " + dtype in part["command"]
  assert parts["data"]["exit_status"] == 0 and parts["data"]["records"][0]["segments_per_s"] > 0


def test_missing_reference_directory_is_one_line(tmp_path):
  proc = _run(
      "--reference", str(tmp_path / "absent"), "--output", str(tmp_path / "b.json"), timeout=60
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "is not a directory" in proc.stderr
  assert not (tmp_path / "b.json").exists()
