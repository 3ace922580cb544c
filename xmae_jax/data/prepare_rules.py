"""What a prepared dataset directory may be replaced by, for every runner of `xmae-prepare`.

An output is refused when it is a file, a foreign non-empty directory, a dataset of another
schema, or a dataset (or an unfinished run) made from another request (`dataset_request`),
unless `overwrite`; a re-run of the same request resumes it. The rules read the output through
a `prepare_storage.Storage`, so a local directory and a bucket are judged alike. Write failures
become one line naming the file (`writing`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from xmae_jax import errors
from xmae_jax import paths
from xmae_jax.data import preprocess as pp
from xmae_jax.data import record as record_lib
from xmae_jax.data import shards

WORK = ".work"  # DIR/.work: a run's private files (cache, request, lock)
REQUEST = "request.json"  # in WORK: what an unfinished run was asked for (see check_request)


class PrepareError(errors.XmaeError):
  """An unusable request (unknown source, empty input, output of another schema)."""


def check_output(storage, out, *, overwrite: bool = False) -> None:
  """Refuses an output that is a file, of another schema (unless `overwrite`), or a foreign
  non-empty directory; an unfinished run of ours (DIR/.work) is resumed. `storage` is the
  `prepare_storage.Storage` that `out` is read through."""
  storage.check_available(out)
  manifest = storage.join(out, shards.MANIFEST)
  if storage.exists(manifest):
    if not overwrite:
      check_manifest_schema(storage.read_bytes(manifest), out)
    return
  names = storage.listdir(out)
  if names and WORK not in names:
    raise PrepareError(
        f"output {out} exists, is not empty and is not an xmae dataset "
        f"directory (no {shards.MANIFEST}); choose another --output"
    )


def check_request(storage, out, request: dict[str, Any], *, overwrite: bool = False) -> None:
  """Refuses to replace a dataset (or an unfinished run) of `out` made from another request.

  The dataset's request is in its manifest (or, for an unfinished run, in .work/request.json),
  read through `storage`; `compare_request` decides.
  """
  if overwrite:
    return
  manifest = storage.join(out, shards.MANIFEST)
  pending = storage.join(storage.join(out, WORK), REQUEST)
  try:
    if storage.exists(manifest):
      compare_request(out, request, manifest=storage.read_bytes(manifest))
    elif storage.exists(pending):
      compare_request(out, request, pending=storage.read_bytes(pending))
  except OSError:
    return  # unreadable: the schema check said enough


def check_manifest_schema(manifest: bytes, out) -> None:
  """An existing output is overwritten only when it is a dataset of this schema."""
  try:
    version = json.loads(manifest).get("schema_version")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
    version = "unreadable"
  if version != record_lib.SCHEMA_VERSION:
    raise PrepareError(
        f"output {out} exists with another schema (manifest schema_version "
        f"{version!r}, this version writes {record_lib.SCHEMA_VERSION})"
    )


@contextlib.contextmanager
def writing(path):
  """Turns a failed write (full disk, read-only file system) into one line naming the file.

  OSError carries the file only when it was raised opening it (and then maybe a temporary
  name), so `path` stands in; `shards` reports its own writes as ShardWriteError.
  """
  try:
    yield
  except OSError as e:
    name = e.filename
    if not name or ".tmp" in Path(str(name)).name:  # a temporary beside `path`: name the target
      name = path
    raise PrepareError(f"cannot write {name}: {e.strerror or type(e).__name__}") from None
  except shards.ShardWriteError as e:
    raise PrepareError(str(e)) from None


def remove_stale_temporaries(directory: Path) -> None:
  """Deletes what an earlier run killed mid-write left (`atomic.atomic_path` temporaries and
  staged shards); a run that ends by an exception removes its own."""
  for p in directory.glob(".*.tmp*"):
    if p.is_file():
      p.unlink(missing_ok=True)


def dataset_request(
    source: str,
    input,
    options: dict[str, Any],
    config: pp.PreprocessConfig,
    *,
    seed: int,
    test_frac: float,
    val_frac: float,
    records_per_shard: int,
) -> dict[str, Any]:
  """What a dataset is made from: a re-run asking for the same resumes, anything else is
  another dataset (see `check_request`). Worker count and progress are not part of it."""
  request = {
      "source": source,
      "input": (
          None
          if input is None
          else paths.text(input)
          if paths.is_remote(input)
          else os.path.abspath(input)
      ),
      "source_options": options,
      "preprocessing": config.as_dict(),
      "split": {"seed": seed, "test_frac": test_frac, "val_frac": val_frac},
      "records_per_shard": records_per_shard,
  }
  return json.loads(json.dumps(request, sort_keys=True, default=str))  # as stored


def compare_request(
    out, request: dict[str, Any], *, manifest: bytes | None = None, pending: bytes | None = None
) -> None:
  """Raises `check_request`'s refusal when the stored request differs from `request`.

  `manifest` is the bytes of an existing dataset's manifest, else `pending` those of an
  unfinished run's .work/request.json. A manifest written before requests were recorded is
  compared on what it has (source, its options, preprocessing, split). Pure: no I/O.
  """
  old = None
  try:
    if manifest is not None:
      m = json.loads(manifest)
      old = m.get("request") or {
          k: m[k] for k in ("source", "source_options", "preprocessing") if k in m
      }
      if "request" not in m and isinstance(m.get("split"), dict):
        old["split"] = {k: m["split"].get(k) for k in ("seed", "test_frac", "val_frac")}
    elif pending is not None:
      old = json.loads(pending)
  except (ValueError, AttributeError):
    old = None  # unreadable: the schema check said enough
  if not isinstance(old, dict):
    return
  diffs = []
  order = ("source", "input", "source_options", "preprocessing", "split", "records_per_shard")
  for k in sorted(request, key=lambda k: order.index(k) if k in order else len(order)):
    new = request[k]
    if k not in old or old[k] == new or (k != "input" and diffs and diffs[0].startswith("source ")):
      continue  # another source: its options differ anyway
    if isinstance(old[k], dict) and isinstance(new, dict):
      diffs += [
          f"{k}.{sub} {old[k].get(sub)!r} -> {new.get(sub)!r}"
          for sub in sorted(set(old[k]) | set(new))
          if old[k].get(sub) != new.get(sub)
      ]
    else:
      diffs.append(f"{k} {old[k]!r} -> {new!r}")
  if diffs:
    what = "a dataset" if manifest is not None else "an unfinished run"
    raise PrepareError(
        f"output {out} holds {what} made from other inputs/settings "
        f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}): give "
        f"--overwrite to replace it, or choose another --output"
    )
