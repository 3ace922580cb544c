"""Readers of raw recordings, one module per format, and the registry `xmae-prepare` uses.

Every reader module provides:
  DESCRIPTION                        one line for --help
  Options                            a dataclass of its options, each field one command-line flag
                                     (prefixed with its name; `option`), defaults included
  add_arguments(parser)              those flags (`add_option_arguments(parser, title, Options)`)
  list_inputs(path, options) -> [str]  the units of work (files, or subjects for synthetic);
                                     raises SourceError when there is nothing to read
  read(unit, options) -> iterator of Recording | Missing
Readers return raw signals at their own rates; all preprocessing is in xmae_jax.data.preprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from xmae_jax import errors

READERS = {
    "synthetic": "xmae_jax.data.sources.synthetic",
    "wfdb": "xmae_jax.data.sources.wfdb",
    "pulsedb": "xmae_jax.data.sources.pulsedb",
    "csv": "xmae_jax.data.sources.tabular",
    "npz": "xmae_jax.data.sources.tabular",
    "edf": "xmae_jax.data.sources.edf",
}
# The readers of recordings a user points a tool at as they are (xmae-embed, xmae-retrieval,
# the reconstruction report): files or folders of a format, not a simulator or a whole database.
FILE_READERS = ("wfdb", "csv", "npz", "edf")


class SourceError(errors.XmaeError):
  """Input that a reader cannot use; the message starts with the reason (e.g. 'unreadable')."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class Recording:
  """One continuous stretch of raw signals of one subject.

  signals: modality ('ecg'/'ppg') -> (samples, fs); both start at t = 0.
  events:  name -> (K, 2) [start_s, end_s]; windows overlapping one get label name = 1, else 0.
  series:  name -> (times_s, values); windows get meta name = the mean of values inside them.
  extra:   name -> (samples, fs), raw channels that are not model inputs, from t = 0 like
           `signals`; they never change the windows, each window only gets meta derived from
           them (`preprocess.derive_window_meta`: 'abp' in mmHg -> sbp/dbp, 'ecg' -> hr).
  non_numeric: modality -> number of cells that held text and were read as missing (NaN), so
           the report can say so instead of the values silently becoming gaps.
  """

  subject_id: str
  name: str
  signals: dict[str, tuple[np.ndarray, float]]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  labels: dict[str, Any] = dataclasses.field(default_factory=dict)
  events: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  series: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  non_numeric: dict[str, int] = dataclasses.field(default_factory=dict)
  extra: dict[str, tuple[np.ndarray, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Missing:
  """A file (or part of one) that the input refers to but that cannot be used."""

  path: str
  reason: str


def get(name: str) -> ModuleType:
  if name not in READERS:
    raise SourceError("unknown source", f"{name!r} (choose from {', '.join(sorted(READERS))})")
  return importlib.import_module(READERS[name])


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] = tuple(READERS)) -> None:
  """The command-line flags of the readers `names` (a module serving two names once)."""
  modules = dict.fromkeys(READERS[n] for n in names)
  for name in modules:
    importlib.import_module(name).add_arguments(parser)


def option(
    default: Any,
    help: str | None = None,
    *,
    type: Callable | None = None,
    choices: Iterable[str] | None = None,
) -> Any:
  """A field of a reader's Options: its default, and its flag's help, parser and choices."""
  return dataclasses.field(
      default=default, metadata={"help": help, "type": type, "choices": choices}
  )


def add_option_arguments(parser: argparse.ArgumentParser, title: str, options: type) -> None:
  """One flag per field of the dataclass `options` (--field-name; a bool is a switch), in an
  argument group `title`, with the field's default."""
  group = parser.add_argument_group(title)
  for f in dataclasses.fields(options):
    kwargs = {"default": f.default, "help": f.metadata.get("help"), "dest": f.name}
    if isinstance(f.default, bool):
      kwargs["action"] = "store_true"
    else:
      kwargs["type"] = f.metadata.get("type") or (str if f.default is None else type(f.default))
      if f.metadata.get("choices"):
        kwargs["choices"] = tuple(f.metadata["choices"])
    group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def option_names(name: str) -> tuple[str, ...]:
  """The option names of the reader `name` (what a parsed command line passes it)."""
  return tuple(f.name for f in dataclasses.fields(get(name).Options))


def default_options(name: str) -> dict[str, Any]:
  """The reader `name`'s options as its flags default them."""
  return dataclasses.asdict(get(name).Options())


def options_of(options: type, given: Mapping[str, Any]):
  """The dataclass `options` filled from the option dict `given` (a request's, a parsed command
  line's): its fields that `given` names, the defaults for the others; other keys ignored."""
  names = {f.name for f in dataclasses.fields(options)}
  return options(**{k: v for k, v in given.items() if k in names})
