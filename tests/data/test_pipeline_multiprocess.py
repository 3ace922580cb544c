"""The input pipeline across processes: Grain worker processes, and two JAX processes.

The two-process test launches local processes joined with jax.distributed on CPU
(tests/helpers/mp_util.py) and checks that they read disjoint parts that together cover the
split, and that the global batches they assemble equal the single-process ones.
"""

import copy
import hashlib

import numpy as np
import pytest

from tests.helpers import mp_util
from xmae_jax import config_lib
from xmae_jax.benchmarks.bench_data import random_records
from xmae_jax.benchmarks.bench_data import write_dataset
from xmae_jax.data import dataset_reader
from xmae_jax.data import pipeline

GLOBAL_BATCH = 8
STEPS = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("ds")
  write_dataset(
      d,
      {"train": random_records(64), "validation": random_records(24, seed=1)},
      records_per_shard=24,
  )
  return d


def data_cfg(d):
  c = config_lib.data_config("paper")
  c.dir = str(d)
  c.min_quality_ppg = c.min_quality_ecg = 0.85
  return c


def test_worker_processes_give_the_in_process_batches(dataset):
  def run(workers, state=None, n=STEPS):
    it = pipeline.make_train_iterator(
        data_cfg(dataset),
        global_batch_size=GLOBAL_BATCH,
        seed=4,
        process_index=0,
        process_count=1,
        with_index=True,
        num_workers=workers,
    )
    try:
      if state is not None:
        it.set_state(state)
      out = [next(it) for _ in range(n)]
      return out, copy.deepcopy(it.get_state())
    finally:
      pipeline.close(it)

  in_process, _ = run(0)
  first, state = run(2, n=5)  # two workers, then save the state ...
  resumed, _ = run(2, state=state, n=STEPS - 5)  # ... and resume in new workers
  for x, y in zip(in_process, first + resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


CHILD = r"""
import hashlib, sys
import numpy as np
from tests.helpers import mp_util


def main():
  mp_util.initialize()
  import jax
  from jax.experimental import multihost_utils
  from xmae_jax import config_lib
  from xmae_jax.data import pipeline
  from xmae_jax.training import sharding
  cfg = config_lib.data_config("paper")
  cfg.dir = sys.argv[1]
  cfg.min_quality_ppg = cfg.min_quality_ecg = 0.85
  mesh = jax.make_mesh((jax.device_count(), 1), ("data", "fsdp"))
  batch, steps = int(sys.argv[2]), int(sys.argv[3])
  it = pipeline.make_train_iterator(cfg, global_batch_size=batch, seed=4, with_index=True)
  local, digests = [], []
  for _ in range(steps):
    b = next(it)
    local.append(b["index"].tolist())
    g = sharding.place_batch(b, mesh)
    assert g["ecg"].shape == (batch, 1000), g["ecg"].shape
    full = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in g.items()}
    digests.append(hashlib.sha256(full["ppg"].tobytes() + full["ecg"].tobytes()).hexdigest())
  evaluated = [b["index"].tolist() for b in pipeline.make_eval_iterator(
      cfg, global_batch_size=batch, split="validation", with_index=True)]
  mp_util.emit({"process": jax.process_index(), "devices": jax.device_count(),
                "rows": sharding.host_rows(mesh, batch).tolist(), "local": local,
                "digests": digests, "eval": evaluated})


if __name__ == "__main__":
  main()
"""


def test_two_jax_processes_read_disjoint_parts_covering_the_split(dataset):
  results = mp_util.run_processes(
      CHILD, 2, devices_per_process=2, timeout=240, args=[str(dataset), GLOBAL_BATCH, STEPS]
  )
  r0, r1 = (r.result for r in results)
  assert (r0["process"], r1["process"], r0["devices"]) == (0, 1, 4)
  assert r0["rows"] == [0, 1, 2, 3] and r1["rows"] == [4, 5, 6, 7]
  cfg = data_cfg(dataset)
  single = pipeline.make_train_iterator(
      cfg, global_batch_size=GLOBAL_BATCH, seed=4, process_index=0, process_count=1, with_index=True
  )
  n = pipeline.count_records(cfg)
  seen = []
  for step in range(STEPS):
    b = next(single)
    a, c = r0["local"][step], r1["local"][step]
    assert a + c == b["index"].tolist()  # the two halves of the global batch
    assert (
        hashlib.sha256(b["ppg"].tobytes() + b["ecg"].tobytes()).hexdigest()
        == r0["digests"][step]
        == r1["digests"][step]
    )
    seen += a + c
  # Within one epoch the two processes read disjoint records, and together all of them.
  epoch = seen[:n]
  assert len(set(epoch)) == n and set(epoch) == set(
      dataset_reader.select_records(
          dataset_reader.ShardReader(str(dataset), "train").index,
          ("ppg", "ecg"),
          {"ppg": 0.85, "ecg": 0.85},
      )
  )
  # The eval pass: disjoint halves covering the validation split.
  val = np.concatenate([np.concatenate([x, y]) for x, y in zip(r0["eval"], r1["eval"])])
  m = pipeline.count_records(cfg, "validation")
  assert len(val) == -(-m // GLOBAL_BATCH) * GLOBAL_BATCH and len(set(val[:m])) == m


def test_mp_util_stops_the_group_when_one_process_fails():
  import time

  failing = (
      "import sys, time\nfrom tests.helpers import mp_util\n"
      "if mp_util.process_index() == 1:\n"
      "  sys.exit('process 1 gives up')\n"
      "time.sleep(60)\n"
  )
  start = time.monotonic()
  with pytest.raises(
      mp_util.MultiProcessError, match="process 1/2 failed(.|\n)*process 1 gives up"
  ):
    mp_util.run_processes(failing, 2, timeout=50)
  assert time.monotonic() - start < 30  # process 0 was killed, not waited for
  with pytest.raises(mp_util.MultiProcessError, match="did not finish within 1 s"):
    mp_util.run_processes("import time\ntime.sleep(60)\n", 1, timeout=1)
