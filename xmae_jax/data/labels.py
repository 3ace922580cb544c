"""Labels of the user's own recordings: a CSV file joined to recordings by record or subject id.

A labels file has one row per record (or per subject) and a header; one column is the key, every
other column is a label:

  record,af,age            subject,sex,bmi
  walk1,1,63               alice,f,22.5
  walk2,0,41               bob,m,27.1

The key column is `record` / `record_id` (joined by record) or `subject` / `subject_id` (joined
by subject); `--labels-by record|subject` chooses when a file has both. A record id is the name
of the input file without its extension (a CSV/NPZ/EDF file's stem, a WFDB record's name), or a
recording's name as xmae-prepare writes it before the ':' of its segment ids (e.g. `walk1/0001`
for the second subject of walk1.csv read with --subject-column); a subject id is the subject of
the recording (see each reader). The joined columns become the recording's labels: every window
of it carries them (record labels, `label.NAME` in an embeddings file), and a labels file wins
over labels a reader found itself (WFDB header comments). Empty cells and NA-like text (`NA`,
`nan`, ...) leave that label unknown for that recording; numbers stay numbers, anything else is
text. The probes take any column as a task: `xmae-probe --task label:NAME[:classification|
regression]`.

`xmae-prepare` and `xmae-embed` take `--labels FILE [--labels-by record|subject]`; a file that
cannot be read, has no key column or repeats an id is one line naming it, and a file that
matches no recording stops the run with one line naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Mapping

from xmae_jax import errors

BY = ("record", "subject")
KEY_COLUMNS = {"record": ("record", "record_id"), "subject": ("subject", "subject_id")}
# the option names of a labels file in a reader's options (xmae-prepare's source options)
OPTIONS = ("labels", "labels_by")


class LabelsError(errors.XmaeError):
  """A labels file that cannot be used (unreadable, no key column, a repeated id)."""


@dataclasses.dataclass(frozen=True)
class LabelTable:
  """A loaded labels file: id -> {column: value} (unknown values left out)."""

  path: str
  by: str  # "record" or "subject"
  key_column: str
  columns: tuple[str, ...]
  rows: Mapping[str, Mapping[str, Any]]
  digest: str  # sha256 of the file's bytes

  def lookup(self, subject_id: str, name: str, unit: str) -> dict[str, Any] | None:
    """The labels of a recording (`name`, read from the input `unit`), None if none match."""
    if self.by == "subject":
      found = self.rows.get(str(subject_id))
    else:
      found = next((self.rows[k] for k in record_ids(name, unit) if k in self.rows), None)
    return None if found is None else dict(found)


def record_ids(name: str, unit: str) -> list[str]:
  """The ids a labels file may use for a recording `name` read from `unit`, most specific first:
  the recording's name, then the input file's name without its extension."""
  path = Path(unit)
  ids = [
      str(name),
      path.stem if path.suffix.lower() in (".csv", ".npz", ".edf", ".bdf", ".hea") else path.name,
  ]
  return list(dict.fromkeys(ids))


def no_match(table: LabelTable, recordings: int, seen: list[str], first: int = 3) -> str:
  """The one-line error of a labels file that matched none of the `recordings` read: the file,
  a few of its ids and a few ids of the recordings (`seen`)."""
  return (
      f"labels file {table.path} matches none of the {recordings} recordings by {table.by} "
      f"(its {table.key_column}: {', '.join(list(table.rows)[:first])}; the recordings': "
      f"{', '.join(seen[:first]) or 'none'})"
  )


def add_arguments(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("labels")
  g.add_argument(
      "--labels",
      default=None,
      metavar="FILE",
      help="CSV of labels, one row per record or subject, joined to the recordings "
      "(key column record/record_id or subject/subject_id); probe a column with "
      "--task label:NAME",
  )
  g.add_argument(
      "--labels-by",
      choices=BY,
      default=None,
      help="join the labels file by record or by subject (default: its key column)",
  )


def options_of(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
  """The labels options of parsed flags ({} without --labels), the file's path made absolute
  and its digest added, so that a changed file is another request (and resume key)."""
  get = args.get if isinstance(args, Mapping) else lambda k: getattr(args, k, None)
  if not get("labels"):
    if get("labels_by"):
      raise LabelsError("--labels-by needs --labels FILE")
    return {}
  table = load(get("labels"), get("labels_by"))
  return {"labels": table.path, "labels_by": table.by, "labels_sha256": table.digest}


def table_of(options: Mapping[str, Any]) -> LabelTable | None:
  """The labels table a reader's options name (None without one); loaded once per process."""
  if not options.get("labels"):
    return None
  return load(options["labels"], options.get("labels_by"))


def load(path: str | os.PathLike, by: str | None = None) -> LabelTable:
  """Reads and checks a labels file (cached per path, modification time and size)."""
  p = Path(path).absolute()
  try:
    st = p.stat()
  except OSError:
    raise LabelsError(f"labels file {path} does not exist") from None
  return _load(str(p), by, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, by: str | None, mtime_ns: int, size: int) -> LabelTable:
  # pandas takes a while to import; only reading a labels file needs it, not every tool's --help.
  import pandas as pd

  if by is not None and by not in BY:
    raise LabelsError(f"--labels-by {by!r}: choose record or subject")
  try:
    data = Path(path).read_bytes()
    header = pd.read_csv(path, nrows=0)
  except Exception as e:  # pandas raises ParserError, EmptyDataError, UnicodeDecodeError, ...
    raise LabelsError(
        f"labels file {path} is not a readable CSV ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''})"
    ) from None
  columns = [str(c).strip() for c in header.columns]
  lower = {c.lower(): c for c in columns}
  found = {b: next((lower[k] for k in KEY_COLUMNS[b] if k in lower), None) for b in BY}
  wanted = [by] if by else list(BY)
  by = next((b for b in wanted if found[b]), None)
  if by is None:
    names = [n for b in wanted for n in KEY_COLUMNS[b]]
    raise LabelsError(
        f"labels file {path} has no {' or '.join(wanted)} column "
        f"({', '.join(names[:-1])} or {names[-1]}; has: "
        f"{', '.join(columns) or 'none'})"
    )
  key = found[by]
  df = pd.read_csv(path, dtype={header.columns[columns.index(key)]: str})
  df.columns = columns
  ids = df[key].astype(str).str.strip()
  if df[key].isna().any():
    raise LabelsError(
        f"labels file {path}: row {int(df[key].isna().to_numpy().argmax()) + 2} " f"has no {key}"
    )
  repeated = ids[ids.duplicated()]
  if len(repeated):
    raise LabelsError(f"labels file {path}: {key} {repeated.iloc[0]!r} is on more than one row")
  label_columns = tuple(c for c in columns if c != key and not c.startswith("Unnamed:"))
  bad = [c for c in label_columns if ":" in c or not c]
  if bad:
    raise LabelsError(
        f"labels file {path}: column name {bad[0]!r} cannot name a task "
        f"(label:NAME); rename it without ':'"
    )
  if not label_columns:
    raise LabelsError(f"labels file {path} has no label column besides {key}")
  rows = {}
  for i, ident in enumerate(ids):
    rows[ident] = {c: v for c in label_columns if (v := _plain(df[c].iloc[i])) is not None}
  return LabelTable(
      path=path,
      by=by,
      key_column=key,
      columns=label_columns,
      rows=rows,
      digest=hashlib.sha256(data).hexdigest(),
  )


def _plain(value: Any) -> int | float | str | None:
  """A cell as int, float or str; None when it is empty or NA."""
  if value is None:
    return None
  if isinstance(value, str):
    text = value.strip()
    return text or None
  if hasattr(value, "item"):  # numpy scalars -> Python
    value = value.item()
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, float):
    if not math.isfinite(value):
      return None
    return value
  if isinstance(value, int):
    return value
  return str(value)
