"""What the command-line tools share: argument parsing, shared flags, user-error handling.

A user error (`errors.XmaeError`: a bad flag, a missing or malformed file, a setting a library
refuses) ends a tool with one line `PROG: error: MESSAGE` on stderr and exit status 1; anything
else is a bug and keeps its traceback. argparse's own complaints (a missing or malformed flag)
are user errors too, so they are one line as well instead of usage text plus the error.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from typing import Any, Callable, Sequence

from xmae_jax.data import labels as labels_lib
from xmae_jax.data import sources
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import tasks as tasks_lib
from xmae_jax.version import __version__

# The comparison library is imported inside the functions that use it: it pulls in JAX and
# scikit-learn, which xmae-prepare (whose workers fork) and every --help do not need.


class UsageError(XmaeError):
  """A command line argparse rejects (missing or malformed flag)."""


def version_line() -> str:
  """What every tool's --version prints."""
  return f"xmae-jax {__version__}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """--help as the tools want it: the module docstring's examples kept as written, every flag's
  default shown, and deprecated spellings left out of the flag list (named in its help)."""

  @staticmethod
  def _shows_default(action) -> bool:
    return (
        action.default not in (None, False, argparse.SUPPRESS, [])
        and action.nargs != 0
        and bool(action.option_strings)
    )

  def _get_help_string(self, action):
    help_text = action.help or ""
    if (
        "%(default)" not in help_text
        and "(default" not in help_text
        and (self._shows_default(action))
    ):
      help_text += (" " if help_text else "") + "(default: %(default)s)"
    return help_text

  def _format_action(self, action):
    if action.help is None and self._shows_default(action):  # a flag without help text
      action = copy.copy(action)
      action.help = "(default: %(default)s)"
    return super()._format_action(action)

  def _format_action_invocation(self, action):
    aliases = getattr(action, "deprecated_aliases", ())
    if aliases:
      action = copy.copy(action)
      action.option_strings = [s for s in action.option_strings if s not in aliases]
    return super()._format_action_invocation(action)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (`error` raises UsageError instead of printing usage),
  --version, defaults in --help, and deprecated flag spellings that still work.

  `add_argument("--new", deprecated=("--old",), ...)`: `--old` is accepted as `--new` with a
  one-line warning on stderr, so scripts written against the old name keep working.
  """

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)
    self.renamed: dict[str, str] = {}
    self.add_argument("--version", action="version", version=version_line())

  def add_argument(self, *names, deprecated: Sequence[str] = (), **kwargs):
    if deprecated and kwargs.get("help") is not argparse.SUPPRESS:
      kwargs["help"] = (
          (kwargs.get("help") or "") + f" (formerly {', '.join(deprecated)}: still accepted)"
      ).strip()
    action = super().add_argument(*names, *deprecated, **kwargs)
    if deprecated:
      # An Action takes any attribute; the help formatter reads this one.
      action.deprecated_aliases = tuple(deprecated)  # type: ignore[attr-defined]
      self.renamed.update((old, names[0]) for old in deprecated)
    return action

  def parse_known_args(self, args=None, namespace=None):
    words = sys.argv[1:] if args is None else list(args)
    for word in words:
      old = word.split("=", 1)[0]
      if old in self.renamed:
        print(
            f"{self.prog}: warning: {old} is deprecated; use {self.renamed[old]}", file=sys.stderr
        )
    return super().parse_known_args(args, namespace)

  def error(self, message):
    raise UsageError(message)


def parser(prog: str, doc: str, **kwargs) -> ArgumentParser:
  """A parser for the tool `prog`: the first line of its module docstring describes it, the
  rest (examples, details) follows the flag list in --help."""
  first, _, rest = doc.strip().partition("\n")
  return ArgumentParser(prog=prog, description=first, epilog=rest.strip("\n") or None, **kwargs)


def missing_modules(names: Sequence[str]) -> list[str]:
  """Which of the modules `names` are not installed (checked without importing them)."""
  return [n for n in names if importlib.util.find_spec(n) is None]


def int_at_least(minimum: int) -> Callable[[str], int]:
  """An argparse `type`: an integer >= `minimum` (argparse names the flag in its one line)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
    return value

  parse.__name__ = f"integer >= {minimum}"
  return parse


def fail(prog: str, error: BaseException | str) -> int:
  """Prints the one-line user error and returns the exit status (1)."""
  print(f"{prog}: error: {error}", file=sys.stderr)
  return 1


def call(prog: str, run: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None) -> int:
  """`run(argv)` with user errors reported as one line; returns the exit status."""
  try:
    run(argv)
  except XmaeError as e:
    return fail(prog, e)
  return 0


# ---- reader options of raw inputs, shared by xmae-embed and xmae-retrieval ---------------------


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
  """The file readers' options (`sources.FILE_READERS`, as xmae-prepare takes them) and
  --labels (the parser needs conflict_handler="resolve")."""
  labels_lib.add_arguments(parser)
  sources.add_arguments(parser, sources.FILE_READERS)


# ---- flags of the probe, shared by xmae-probe and xmae-compare ---------------------------------

# The flags' defaults are the library's (one place: evaluation/probe_config.py).
_LINEAR, _XMAE = probe_config.LinearProbeConfig(), probe_config.XMAEProbeConfig()


def add_probe_arguments(p: argparse.ArgumentParser) -> None:
  """The task and protocol options."""
  p.add_argument(
      "--task",
      action="append",
      default=None,
      help="task spec (repeatable), e.g. hr, age_over:60, hypertension:clinical, "
      "label:NAME[:classification|regression] (any label column), or 'all'; "
      f"known: {', '.join(tasks_lib.REGISTRY)}",
  )
  p.add_argument(
      "--protocol", choices=(*probe_config.PROTOCOLS, "both"), default=probe_config.PROTOCOLS[0]
  )
  add_fold_arguments(p)
  p.add_argument("--inner-folds", type=int_at_least(2), default=_LINEAR.inner_folds)
  p.add_argument(
      "--xmae-folds",
      choices=("subject", "segment"),
      default="subject" if _XMAE.group_folds else "segment",
      help=f"the xmae protocol's folds (its own seed is {_XMAE.seed})",
  )


def add_fold_arguments(p: argparse.ArgumentParser) -> None:
  """Outer folds, bootstrap and seed of the linear probe (xmae-probe, xmae-compare, xmae-timing)."""
  p.add_argument(
      "--folds",
      type=int_at_least(2),
      default=_LINEAR.outer_folds,
      help="outer subject-grouped folds",
  )
  p.add_argument(
      "--bootstrap",
      type=int_at_least(1),
      default=_LINEAR.n_bootstrap,
      help="subject bootstrap resamples",
  )
  p.add_argument(
      "--seed", type=int, default=_LINEAR.seed, help="folds/bootstrap seed (linear protocol)"
  )


def linear_config(args) -> probe_config.LinearProbeConfig:
  """The LinearProbeConfig of the parsed fold flags (--inner-folds only where it is a flag)."""
  inner = getattr(args, "inner_folds", None)
  return probe_config.LinearProbeConfig(
      outer_folds=args.folds,
      seed=args.seed,
      n_bootstrap=args.bootstrap,
      **({} if inner is None else {"inner_folds": inner}),
  )


def xmae_config(args) -> probe_config.XMAEProbeConfig:
  """The XMAEProbeConfig of the parsed --xmae-folds."""
  return probe_config.XMAEProbeConfig(group_folds=args.xmae_folds == "subject")


def protocols(args) -> tuple[str, ...]:
  return ("linear", "xmae") if args.protocol == "both" else (args.protocol,)


# ---- encoders to compare, shared by xmae-compare and xmae-timing -------------------------------


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--data", required=True, help="a prepared dataset directory")
  p.add_argument("--output-dir", required=True, help="report directory to write")
  p.add_argument("--encoder", action="append", default=[], help="NAME=PATH (repeatable)")
  p.add_argument(
      "--random",
      action="append",
      default=[],
      help="NAME=CONFIG_FILE[:ARG] or NAME=WORKDIR|PACKAGE (its config): a randomly "
      "initialized encoder (repeatable)",
  )
  p.add_argument("--random-seed", type=int, default=0)
  p.add_argument("--step", default="auto", help="checkpoint of workdir encoders")
  p.add_argument(
      "--modalities",
      dest="modality",
      deprecated=("--modality",),
      choices=("ppg", "ecg"),
      default="ppg",
      help="the input every encoder embeds from (an M2AE ppg+ecg encoder: that " "modality alone)",
  )
  p.add_argument(
      "--split",
      action="append",
      default=None,
      help="dataset split(s) to embed and probe (default: all)",
  )
  p.add_argument(
      "--reuse-embeddings",
      action="store_true",
      help="reuse OUT/embeddings/NAME.npz files that exist",
  )
  p.add_argument(
      "--baseline",
      default=None,
      help="encoder NAME to report paired differences against (e.g. random)",
  )


def encoder_specs(args):
  """The EncoderSpecs of the parsed --encoder and --random flags."""
  # Imported here: compare loads JAX, and every tool imports this module for its --help.
  from xmae_jax.evaluation import compare as compare_lib

  return compare_lib.encoder_specs(args.encoder, args.random, step=args.step, seed=args.random_seed)
