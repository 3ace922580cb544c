"""The one path layer: every user path (a workdir, a dataset, a package, a report) is a local
folder or an object-store URL (`gs://bucket/...`), and this module is how the tools tell them
apart and read or write them.

`path(p)` is a `pathlib.Path` for a local path and an `etils.epath.Path` for a URL; both have
the same methods (`/`, `read_text`, `write_bytes`, `exists`, `is_dir`, `iterdir`, `glob`,
`mkdir`, `open`), so code written against one works on the other. epath reaches gs:// through
gcsfs (`pip install xmae-jax[gcs]`, part of the train extra), which takes Google's default
credentials and honours `STORAGE_EMULATOR_HOST`; Orbax writes checkpoints to gs:// itself
(through TensorStore, which honours `TENSORSTORE_GCS_HTTP_URL`).

What cannot work on an object store directly is staged on local disk:
- an atomic write (`atomic.atomic_path`) writes a local temporary file and uploads it as one
  object (`upload`): an object write is atomic by itself, no rename needed;
- a dataset that ArrayRecord must memory-map, and a package that a reader opens file by file,
  are mirrored into a local cache folder first (`local_mirror`).

`check_remote` tries a URL before any work starts, so a bucket that does not exist, missing
credentials or an endpoint that cannot be reached is one line naming the path.

Imports only `errors` and `atomic` (whose atomic write imports this module when it runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import uuid
from typing import TYPE_CHECKING, Union

from xmae_jax import atomic
from xmae_jax import errors

if TYPE_CHECKING:  # etils is imported on first use at run time: only remote paths need it
  from etils import epath

# The URL schemes epath reaches through fsspec; anything else is a local path.
REMOTE_SCHEMES = ("gs://", "s3://")
# Where `local_mirror` keeps its copies (XMAE_CACHE overrides it).
CACHE_ENV = "XMAE_CACHE"

AnyPath = Union[pathlib.Path, "epath.Path"]


class StorageError(errors.XmaeError):
  """A remote path that cannot be read or written (no bucket, no credentials, no endpoint)."""


def is_remote(p) -> bool:
  """True for an object-store URL (gs://, s3://), as a string or an epath.Path."""
  return os.fspath(p).startswith(REMOTE_SCHEMES)


def path(p) -> AnyPath:
  """`p` as a path object: epath.Path for a URL, pathlib.Path for anything else."""
  if is_remote(p):
    from etils import epath  # imported on first use: only remote paths need it

    return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))
  return pathlib.Path(p)


def absolute(p) -> AnyPath:
  """`path(p)`, made absolute when it is local (a URL is absolute already)."""
  p = path(p)
  return p if is_remote(p) else p.absolute()


def text(p) -> str:
  """A path as the user wrote it, for messages and for libraries that take strings."""
  return os.fspath(p)


def size(p) -> int:
  """The size in bytes of the file `p` (epath's stat names it `length`)."""
  p = path(p)
  return p.stat().length if is_remote(p) else p.stat().st_size


# ---- checking a remote path before the work -------------------------------------------------


def _reason(e: BaseException) -> str:
  """The first line of what the storage client said, without its traceback."""
  line = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return f"{type(e).__name__}: {line}"[:200]


def check_remote(p, what: str, *, write: bool) -> None:
  """Tries the URL `p` (a probe object written and removed when `write`, else a listing of the
  folder) and raises StorageError naming it when the storage refuses; nothing for a local path.

  Whatever stands in the way shows here, before any work: a bucket that does not exist, missing
  or refused credentials, an endpoint that cannot be reached.
  """
  if not is_remote(p):
    return
  target = path(p)
  client_log = logging.getLogger("gcsfs")  # its retries log tracebacks; the one line says it
  level = client_log.level
  client_log.setLevel(logging.CRITICAL)
  try:
    if write:
      probe = target / f".xmae-write-probe-{uuid.uuid4().hex}"
      probe.write_bytes(b"")
      probe.unlink()
    elif not target.is_dir():
      raise FileNotFoundError("no such folder")
  except ImportError:
    raise StorageError(
        f"{what} {text(p)}: reading {text(p).split('://')[0]}:// needs gcsfs "
        "(pip install 'xmae-jax[gcs]')"
    ) from None
  except Exception as e:  # pylint: disable=broad-except  # gcsfs/aiohttp/auth raise many types
    verb = "written" if write else "read"
    raise StorageError(f"{what} {text(p)} cannot be {verb} ({_reason(e)})") from None
  finally:
    client_log.setLevel(level)


def check_writable(p, what: str = "output folder", *, create: bool = True):
  """`errors.check_writable` for a local folder, `check_remote` for a URL (a bucket has no
  folders to make); returns `path(p)`."""
  if is_remote(p):
    check_remote(p, what, write=True)
    return path(p)
  return errors.check_writable(p, what, create=create)


# ---- moving whole files and folders ----------------------------------------------------------


def upload(local, remote) -> None:
  """Copies the local file or folder `local` to the URL `remote`, one object write per file."""
  local, remote = pathlib.Path(local), path(remote)
  if local.is_dir():
    for f in sorted(local.rglob("*")):
      if f.is_file():
        _put(f, remote / f.relative_to(local).as_posix())
  else:
    _put(local, remote)


def _put(local: pathlib.Path, remote) -> None:
  # An object is replaced as a whole when its upload completes: readers see the old object or
  # the new one, never a part, so no temporary name and rename are needed.
  with open(local, "rb") as src, remote.open("wb") as dst:
    while chunk := src.read(1 << 22):
      dst.write(chunk)


def download(remote, local, *, known: dict | None = None, name: str = "") -> None:
  """Copies the URL `remote` (a file or a folder, recursively) to the local path `local`.

  `known` maps each file's relative `name` to the (size, modification time) of the object it was
  copied from; a file whose object still has those is not copied again, and `known` is updated
  with what was copied.
  """
  remote, local = path(remote), pathlib.Path(local)
  known = {} if known is None else known
  if remote.is_dir():
    local.mkdir(parents=True, exist_ok=True)
    for child in remote.iterdir():
      download(child, local / child.name, known=known, name=f"{name}/{child.name}".lstrip("/"))
    return
  stat = remote.stat()
  signature = [stat.length, stat.mtime]
  if local.is_file() and known.get(name) == signature:
    return
  local.parent.mkdir(parents=True, exist_ok=True)
  with atomic.atomic_path(local) as tmp, remote.open("rb") as src, open(tmp, "wb") as dst:
    while chunk := src.read(1 << 22):
      dst.write(chunk)
  known[name] = signature


def cache_dir() -> pathlib.Path:
  """The local folder that holds mirrors of remote folders."""
  root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "xmae_jax", "remote")
  return pathlib.Path(root).expanduser()


def cache_folder(url, kind: str) -> pathlib.Path:
  """The local folder of `cache_dir()` that belongs to the URL `url` for `kind` (the same URL
  gives the same folder, so a second run finds what the first one copied or staged)."""
  url = text(url).rstrip("/")
  key = hashlib.sha256(url.encode()).hexdigest()[:16]
  return cache_dir() / kind / f"{url.split('://', 1)[-1].replace('/', '_')[:80]}-{key}"


def local_mirror(p, what: str) -> pathlib.Path:
  """A local folder with the content of `p`: `p` itself when local, else a copy of the remote
  folder in `cache_dir()` (refreshed file by file: a second call copies only the objects
  replaced since). Raises StorageError naming `p` when it cannot be read."""
  if not is_remote(p):
    return pathlib.Path(p)
  check_remote(p, what, write=False)
  url = text(p).rstrip("/")
  local = cache_folder(url, "mirror")
  record = local.with_name(local.name + ".json")  # what each local file was copied from
  try:
    known = json.loads(record.read_text()) if record.is_file() else {}
  except ValueError:
    known = {}
  try:
    download(url, local, known=known)
    atomic.atomic_write(record, json.dumps(known))
  except OSError as e:
    raise StorageError(f"{what} {url} cannot be copied to {local} ({_reason(e)})") from None
  return local


def staging_dir(prefix: str) -> pathlib.Path:
  """A new local temporary folder for output that is uploaded once complete."""
  return pathlib.Path(tempfile.mkdtemp(prefix=prefix))
