"""Where a prepared dataset is written: a local directory or a URL of Beam's file systems.

Both runners of `xmae-prepare` read an existing output through a `Storage` (the rules of
`prepare_rules`); the Beam runner also writes through it, every file arriving whole or not at
all: built in a local `staging()` folder, then moved (or uploaded) into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from xmae_jax import atomic
from xmae_jax.data import prepare_rules as rules


class Storage:
  """Where a dataset directory is written; every file arrives whole or not at all.

  Writers build each file in a local `staging()` folder and hand it to `put`, which moves it
  into place. Subclasses implement the five primitives; tests substitute a fake one.
  """

  remote = True

  def check_available(self, path: str) -> None:
    """Raises a one-line PrepareError when `path` cannot be written by this storage."""

  def join(self, base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name

  def exists(self, path: str) -> bool:
    raise NotImplementedError

  def read_bytes(self, path: str) -> bytes:
    raise NotImplementedError

  def put(self, local_path: str, path: str) -> None:
    """Moves the finished local file `local_path` to `path` (replacing it)."""
    raise NotImplementedError

  def delete(self, path: str) -> None:
    """Removes `path` if it exists."""
    raise NotImplementedError

  def listdir(self, path: str) -> list[str]:
    """Names directly inside the folder `path` (a folder's name once); [] if there is none."""
    raise NotImplementedError

  def prune(self, path: str) -> None:
    """Removes the folder `path` if it is empty (object stores have no empty folders)."""

  @contextlib.contextmanager
  def staging(self, out: str) -> Iterator[Path]:
    """A private local folder for files on their way to `out`; removed afterwards."""
    d = tempfile.mkdtemp(prefix="xmae-beam-")
    try:
      yield Path(d)
    finally:
      shutil.rmtree(d, ignore_errors=True)

  def write_bytes(self, path: str, data: bytes) -> None:
    with self.staging(path.rsplit("/", 1)[0]) as tmp:
      (tmp / "blob").write_bytes(data)
      self.put(str(tmp / "blob"), path)


class LocalStorage(Storage):
  """A local or mounted path: staging lies beside the output, so `put` is a rename."""

  remote = False

  def check_available(self, path):
    if os.path.exists(path) and not os.path.isdir(path):
      raise rules.PrepareError(f"output {path} exists and is not a directory")

  def join(self, base, name):
    return os.path.join(base, name)

  def exists(self, path):
    return os.path.exists(path)

  def read_bytes(self, path):
    return Path(path).read_bytes()

  def put(self, local_path, path):
    with atomic.atomic_path(path) as tmp:
      shutil.move(local_path, tmp)

  def delete(self, path):
    Path(path).unlink(missing_ok=True)

  def write_bytes(self, path, data):
    atomic.atomic_write(path, data)

  def listdir(self, path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []

  def prune(self, path):
    with contextlib.suppress(OSError):  # absent or not empty: kept
      os.rmdir(path)

  @contextlib.contextmanager
  def staging(self, out):
    work = Path(out) / rules.WORK
    work.mkdir(parents=True, exist_ok=True)
    d = tempfile.mkdtemp(prefix="beam-", dir=work)
    try:
      yield Path(d)
    finally:
      shutil.rmtree(d, ignore_errors=True)


class BeamStorage(Storage):
  """A URL of one of Beam's file systems (gs:// with apache-beam[gcp], s3://, ...)."""

  def _fs(self):
    # apache_beam is an optional extra, needed for Beam's file systems only.
    from apache_beam.io.filesystems import FileSystems

    return FileSystems

  def check_available(self, path):
    try:
      self._fs().get_filesystem(path)
    except ValueError as e:  # e.g. gs:// without apache-beam[gcp]
      raise rules.PrepareError(f"output {path}: {str(e).splitlines()[0]}") from None

  def exists(self, path):
    return self._fs().exists(path)

  def read_bytes(self, path):
    with self._fs().open(path) as f:
      return f.read()

  def put(self, local_path, path):
    # apache_beam is an optional extra, needed for Beam's file systems only.
    from apache_beam.io.filesystem import CompressionTypes

    with open(local_path, "rb") as src, self._fs().create(
        path, compression_type=CompressionTypes.UNCOMPRESSED
    ) as dst:
      shutil.copyfileobj(src, dst, 16 << 20)
    os.unlink(local_path)

  def delete(self, path):
    if self.exists(path):
      self._fs().delete([path])

  def listdir(self, path):
    prefix = path.rstrip("/") + "/"
    [match] = self._fs().match([prefix + "**"])  # '*' stops at '/': .work/ would hide
    return sorted({m.path[len(prefix) :].split("/")[0] for m in match.metadata_list})


def storage_for(output: str) -> Storage:
  return BeamStorage() if "://" in str(output) else LocalStorage()
