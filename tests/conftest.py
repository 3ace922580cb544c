"""Test-wide settings: CPU only, one compilation cache per test run, the shared PhysioNet records,
small temp datasets.

Compiling dominates the suite's time (tiny models, few steps), and many tests compile the same
programs again: in other processes (training runs, CLIs, multi-process tests) or from new jit
wrappers in this one. A persistent compilation cache in pytest's temp dir, set here through
the environment, is read by this process and inherited by every subprocess (and every xdist
worker), so each program is compiled once per test run. A `JAX_COMPILATION_CACHE_DIR` set by the
caller wins (e.g. a cache kept between runs).
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No progress lines in the tools' output (tests assert one-line errors); tests/cli/test_progress.py
# turns them on where they are the subject.
os.environ.setdefault("XMAE_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHYSIONET = SHARED / "data" / "physionet"

# Test modules that run first: the longest ones, so that under xdist (launch/test.sh) they do not
# start last and leave one worker alone at the end. Order within this list is the start order:
# longest first, by the per-module times of a full `bash launch/test.sh --durations=0` run.
HEAVY_FIRST = (
    "tests/storage/test_gcs.py",
    "tests/launch/test_accelerator_bench.py",
    "tests/training/test_multiprocess_faults.py",
    "tests/evaluation/test_fingerprint.py",
    "tests/training/test_train.py",
    "tests/training/test_compile_tpu.py",  # TPU compiles on CPU: minutes on a loaded machine
    "tests/training/test_checkpoint_faults.py",
    "tests/training/test_run_faults.py",
    "tests/models/test_xmae.py",
    "tests/models/test_baselines.py",
)

# Modules whose compiled programs run only a few steps and whose assertions compare the program
# with itself (cost analysis, a guarded step against the same step), never numerics against the
# reference: they compile with XLA's fast-compile options (`jax_disable_most_optimizations`:
# LLVM -O0, no expensive passes). Golden, parity and fast-form equality tests keep the defaults.
# Slower code: long training loops (test_xmae's 250 steps) lose more than the compile saves.
FAST_COMPILE_MODULES = (
    "tests/benchmarks/test_bench_train.py",
    "tests/training/test_step_guard.py",
)
# tests/training/test_train.py's training subprocesses get the same options through the
# environment (tests/helpers/mp_util.FAST_COMPILE_ENV).


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
  # trylast: pytest's own tmp_path plugin has set up its temp dir by now. Under xdist
  # the controller runs this first and its workers inherit the variables (one shared cache).
  factory = getattr(config, "_tmp_path_factory", None)
  if factory is not None and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    cache = factory.getbasetemp() / "xla_cache"
    cache.mkdir(exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  # Keep small programs too: the suite compiles many that take well under the default 1 s.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _repo_path(node) -> str:
  path = Path(node.path).resolve()
  return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def pytest_collection_modifyitems(session, config, items):
  rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(_repo_path(item), len(rank)))  # stable otherwise


@pytest.fixture(autouse=True, scope="module")
def _fast_compile(request):
  if _repo_path(request.node) not in FAST_COMPILE_MODULES:
    yield
    return
  import jax

  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)
    # jit's in-memory caches do not key on this flag: drop what this module compiled, so no
    # later test runs a fast-compiled program (the persistent cache does key on it).
    jax.clear_caches()


@pytest.fixture(scope="session")
def physionet_dir():
  if not PHYSIONET.is_dir():
    pytest.skip(f"{PHYSIONET} not present (../shared beside the checkout)")
  return PHYSIONET


@pytest.fixture(autouse=True, scope="session")
def _absl_flags_parsed():
  # Grain's multiprocessing reads absl flags; outside app.run they must be marked parsed.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
