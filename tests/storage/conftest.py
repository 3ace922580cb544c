"""A local Google Cloud Storage server for tests/storage: `gcp-storage-emulator` (with the
generation rules of gcs_server.py), in memory, on 127.0.0.1 at a free port, with one bucket.

`gcs` (one per module) starts it in a subprocess and points every client at it, in this process
(os.environ) and in the subprocesses the tests start (`gcs.env`):
- gcsfs (what etils.epath uses for gs://): STORAGE_EMULATOR_HOST, anonymous (FSSPEC_GCS_TOKEN),
  and without its probe of the bucket type over gRPC, which the emulator does not serve;
- TensorStore (what Orbax and the workdir lock use): TENSORSTORE_GCS_HTTP_URL, and a fixed
  token (GOOGLE_AUTH_TOKEN_FOR_TESTING) so it looks for no credentials;
- Google's auth library: no metadata-server probe (NO_GCE_CHECK), so nothing leaves 127.0.0.1.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Looked up, not imported: gcsfs reads its settings from the environment when imported, which
# must happen after the fixture set them.
for _name, _extra in (("gcp_storage_emulator", "test"), ("gcsfs", "gcs")):
  if importlib.util.find_spec(_name) is None:
    pytest.skip(f"needs {_name} (pip install xmae-jax[{_extra}])", allow_module_level=True)

BUCKET = "xmae-test"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str, cache: Path) -> dict[str, str]:
  """The variables that send gcsfs, TensorStore and google-auth to the server at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "FSSPEC_GCS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "NO_GCE_CHECK": "true",
      "XMAE_CACHE": str(cache),
  }


class Emulator:

  def __init__(self, url: str, env: dict[str, str], log: Path):
    self.url, self.env, self.log = url, env, log
    self.bucket = f"gs://{BUCKET}"

  @staticmethod
  def unused_url() -> str:
    """An address on 127.0.0.1 where nothing listens (an endpoint that does not answer)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  root = tmp_path_factory.mktemp("gcs")
  port = free_port()
  log = root / "emulator.log"
  with open(log, "w") as out:
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("gcs_server.py")), str(port), BUCKET],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + 60
  while True:
    assert server.poll() is None, log.read_text()[-3000:]
    try:
      socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
      break
    except OSError:
      assert time.monotonic() < deadline, "the storage emulator did not start"
      time.sleep(0.1)
  variables = client_env(url, root / "cache")
  saved = {k: os.environ.get(k) for k in variables}
  os.environ.update(variables)
  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
  }
  try:
    yield Emulator(url, env, log)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.terminate()
    server.wait(30)
