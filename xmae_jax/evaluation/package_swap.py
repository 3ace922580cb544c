"""Replacing an output directory in one step, as exports do: the new content is written into a
scratch folder beside the output, then swapped in by two renames (the old output aside, the new
one in), so the output is always the old or the complete new one; what an export killed
mid-write leaves is recognised by its marker and cleaned up by the next export to that output.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

# An export works in a scratch folder beside its output, named `.OUT.xmae-export-XXXXXXXX` and
# holding a marker file (the process and host that made it, and for which output): the package
# being written (new/) and, during the swap, the package it replaces (old/). Only folders with
# that name and a marker of a process that is gone are ever cleaned up, so a user's `OUT.old/`
# or `OUT.tmp-x/` beside the output is never touched.
SCRATCH_MARKER = "xmae-export-scratch.json"
NEW, OLD = "new", "old"


def _scratch_prefix(output: Path) -> str:
  return f".{output.name}.xmae-export-"


def make_scratch(output: Path) -> Path:
  """A new scratch folder beside `output`, marked with this process, host and output."""
  scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(output), dir=output.parent))
  (scratch / SCRATCH_MARKER).write_text(
      json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "output": output.name})
  )
  return scratch


def swap(scratch: Path, output: Path) -> None:
  """Renames scratch/new to `output`; an existing `output` (the caller checked it may go) is moved
  into scratch/old first (a directory cannot be replaced by one rename) and put back if the
  second rename fails."""
  old = scratch / OLD
  if output.exists():
    os.replace(output, old)
  try:
    os.replace(scratch / NEW, output)
  except BaseException:
    if old.exists() and not output.exists():
      os.replace(old, output)
    raise


def remove_stale(output: Path, *, is_ours: Callable[[Path], bool]) -> None:
  """Removes the scratch folders of exports to `output` whose process is gone (an export killed
  mid-write), after putting back the previous output one of them holds (when `is_ours` says it
  is one) if `output` is missing (killed between the two renames of the swap). Those of a live
  export, of another host, and anything without this tool's marker are left alone."""
  for scratch in output.parent.glob(_scratch_prefix(output) + "*"):
    try:
      mark = json.loads((scratch / SCRATCH_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
      continue
    if (
        not isinstance(mark, dict)
        or mark.get("output") != output.name
        or mark.get("host") != socket.gethostname()
        or not isinstance(mark.get("pid"), int)
        or _alive(mark["pid"])
    ):
      continue
    old = scratch / OLD
    if not output.exists() and old.is_dir() and is_ours(old):
      os.replace(old, output)
    shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True
