"""Fixtures several training test modules share."""

import pytest

from tests.helpers import mp_util


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  """Environment of training subprocesses: a persistent compilation cache of this module, CPU,
  XLA's fast-compile options."""
  return {
      "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PLATFORMS": "cpu",
      **mp_util.FAST_COMPILE_ENV,
  }
