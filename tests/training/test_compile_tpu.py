"""xmae-compile: the trainer's step compiled for a TPU topology on this CPU (libtpu's
compile-only devices), with a data-only mesh and with data x fsdp.

Needs libtpu (the test extra installs it on Python 3.11); skips without it. Every TPU compile of
the suite is the module fixture's two, under one file lock, so no two libtpu processes compile at
once (xdist's loadscope keeps a module on one worker; the lock also covers concurrent runs).
"""

import fcntl
import importlib.util
import json
import os
import tempfile
from concurrent import futures
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xmae_jax import config_lib

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install 'jax[tpu]')",
)

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = "v5p:2x2x1"  # a v5p-8: 4 chips, one host; the fewest chips for data 2 x fsdp 2
# The tiny preset with one PPG block (the fewest the step has every block kind with): compile
# time follows the number of operations. The segment length stays the paper's: the partitioner
# splits the step's random numbers differently for other shapes (200 samples: 59
# collective-permutes instead of 15), and those are among the collectives bounded below.
SMALLEST = {"model.depth_ppg": "1"}
# Before buffers.pack split a whole gradient buffer (see there), the fsdp step issued 124
# all-reduces, 36 all-gathers and 237 collective-permutes; after, 53 + 2 + 15 (and 52 + 15 with
# a data-only mesh): the all-reduces are one per synchronized BatchNorm statistic plus the
# combined gradient and metrics, the permutes 8-byte key pieces.
MAX_COLLECTIVES = 80


@pytest.fixture(scope="module")
def compiled():
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # the lock below serializes us
  from xmae_jax.training import compile as compile_lib

  lock = open(Path(tempfile.gettempdir()) / "xmae_jax_compile_tpu.lock", "w")
  fcntl.flock(lock, fcntl.LOCK_EX)
  try:
    devices = compile_lib.topology_devices(TOPOLOGY)

    def compile_with(fsdp):
      config = config_lib.load(
          f"{REPO}/configs/xmae.py:tiny",
          {
              **SMALLEST,
              "mesh.axes": f'(("data", -1), ("fsdp", {fsdp}))',
              "mesh.param_rules": '((".*", "fsdp"),)',
          },
      )
      c = compile_lib.compile_step(config, TOPOLOGY, devices)
      return c, compile_lib.report(c)

    # The two programs are independent: compiled side by side, on two threads, they can use two
    # cores at once.
    with futures.ThreadPoolExecutor(2) as pool:
      jobs = {fsdp: pool.submit(compile_with, fsdp) for fsdp in (1, 2)}
      out = {fsdp: job.result() for fsdp, job in jobs.items()}
    yield out
  finally:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def test_the_programs_input_shardings_are_the_trainers_state_shardings(compiled):
  for fsdp, (c, rec) in compiled.items():
    got = c.compiled.input_shardings[0][0]
    assert jax.tree.structure(got) == jax.tree.structure(c.state_sh)
    for g, want, x in zip(
        jax.tree.leaves(got), jax.tree.leaves(c.state_sh), jax.tree.leaves(c.abstract)
    ):
      assert g.is_equivalent_to(want, len(x.shape)), (fsdp, g, want)
    assert rec["mesh"] == {"data": 4 // fsdp, "fsdp": fsdp}
    assert (rec["chips"], rec["devices"], rec["hosts"]) == (4, 4, 1)


def test_fsdp_splits_the_sharded_state_by_the_fsdp_factor(compiled):
  (c1, r1), (c2, r2) = compiled[1], compiled[2]
  specs = [s.spec for s in jax.tree.leaves(c2.state_sh)]
  sharded = [x for x, spec in zip(jax.tree.leaves(c2.abstract), specs) if spec != P()]
  full = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in sharded)
  assert full > 0 and not any(s.spec != P() for s in jax.tree.leaves(c1.state_sh))
  saved = r1["hbm_per_chip"]["argument"] - r2["hbm_per_chip"]["argument"]
  # Same batch per chip in both (split over data x fsdp): the difference is the sharded
  # state's other half, within the TPU's padding of arrays in memory.
  assert abs(saved - full / 2) <= 0.02 * full + 64 * 1024, (saved, full)


def test_fsdp_collectives_appear_only_with_fsdp_and_the_count_stays_small(compiled):
  data_only, fsdp = compiled[1][1]["collectives"], compiled[2][1]["collectives"]
  assert "all-gather" not in data_only and "reduce-scatter" not in data_only
  # One all-gather per sharded buffer (parameters, BatchNorm statistics) before use.
  assert 1 <= fsdp["all-gather"]["count"] <= 2
  for _, rec in compiled.values():
    assert rec["collectives"]["all-reduce"]["count"] >= 1  # the gradients' sum over the batch
    assert rec["collectives_total"] <= MAX_COLLECTIVES, rec["collectives"]


def test_the_report_projects_from_xlas_estimate(compiled):
  from xmae_jax.training import compile as compile_lib

  rec = compiled[1][1]
  assert rec["xla_step_time_s"] > 0 and rec["flops_per_step_per_chip"] > 0
  assert rec["segments_per_s_per_chip"] == pytest.approx(8 / rec["xla_step_time_s"] / 4)
  assert rec["mfu"] == pytest.approx(
      rec["flops_per_step_per_chip"] / rec["xla_step_time_s"] / 459e12
  )
  assert 0 < rec["hbm_fraction"] < 1
  json.dumps(rec)
  text = compile_lib.table(rec)
  assert "HBM per chip" in text and "all-reduce per step" in text


def test_a_program_over_a_chips_hbm_is_one_line_naming_the_excess():
  from xmae_jax.training import compile as compile_lib

  gib = compile_lib.GIB
  mem = {
      "argument": 10 * gib,
      "output": 10 * gib,
      "alias": 10 * gib,
      "temp": 7 * gib,
      "generated_code": 0,
      "total": 17 * gib,
  }
  with pytest.raises(compile_lib.CompileError) as e:
    compile_lib.check_fits(mem, compile_lib.CHIPS["v5e"], "v5e:4x4")
  assert "\n" not in str(e.value)
  assert "17.00 GiB per chip" in str(e.value) and "1.00 GiB over" in str(e.value)
  compile_lib.check_fits(mem, compile_lib.CHIPS["v5p"], "v5p:2x2x1")  # fits: no error


def test_cli_bad_topology_and_mesh_are_one_line(monkeypatch, capsys):
  from xmae_jax.cli import xmae_compile

  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # main() sets it; restored after the test
  for args, text in (
      (["--topology", "v9:2x2"], "expected GEN:AxB[xC]"),
      (["--topology", "v5p:2x2x1", "--mesh", "data"], "--mesh 'data'"),
      # v6e:8x8 is an 8 x 8 torus: an axis of 16 chips takes both, one of 4 would split one.
      (["--topology", "v6e:8x8", "--mesh", "data=16,fsdp=4"], "do not fit the slice's physical"),
  ):
    assert xmae_compile.main(["--config", f"{REPO}/configs/xmae.py:tiny", *args]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("xmae-compile: error: ")
    assert text in err
