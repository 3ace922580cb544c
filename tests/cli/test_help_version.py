"""Every console script of setup.py answers --help (its flags, with defaults) and --version with
exit status 0; deprecated flag spellings still work."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xmae_jax
from xmae_jax.cli import common

REPO = Path(__file__).resolve().parents[2]


def _setup_call() -> ast.Call:
  tree = ast.parse((REPO / "setup.py").read_text())
  return next(
      n
      for n in ast.walk(tree)
      if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"
  )


def entry_points() -> dict[str, str]:
  """NAME -> module:function of setup.py's console_scripts, read from the file."""
  for node in ast.walk(_setup_call()):
    if isinstance(node, ast.Dict):
      for key, value in zip(node.keys, node.values):
        if isinstance(key, ast.Constant) and key.value == "console_scripts":
          return dict(ast.literal_eval(v).split("=", 1) for v in value.elts)
  raise AssertionError("setup.py declares no console_scripts")


SCRIPTS = entry_points()

# A few flags each tool must list (its main inputs and outputs, under their final names).
EXPECTED_FLAGS = {
    "xmae-prepare": ["--source", "--input", "--output", "--require-modalities", "--workers"],
    "xmae-train": ["--config", "--workdir", "--compilation_cache", "--config.SECTION.FIELD"],
    "xmae-import-torch": ["--checkpoint", "--config", "--workdir"],
    "xmae-export": ["--workdir", "--output", "--modality", "--step"],
    "xmae-embed": ["--encoder", "--input", "--output", "--modalities", "--modality"],
    "xmae-probe": ["--embeddings", "--task", "--output-dir", "--folds"],
    "xmae-compare": ["--data", "--output-dir", "--encoder", "--modalities", "--task"],
    "xmae-timing": ["--data", "--output-dir", "--encoder", "--modalities"],
    "xmae-recon-report": ["--model", "--data", "--output-dir", "--split"],
    "xmae-retrieval": ["--encoder", "--input", "--output-dir", "--gallery-size"],
    "xmae-compile": ["--config", "--topology", "--mesh", "--batch-size", "--dtype"],
}


def _call(target: str, args: list[str], capsys) -> tuple[int, str, str]:
  module, function = target.split(":")
  main = getattr(importlib.import_module(module), function)
  name = next(n for n, t in SCRIPTS.items() if t == target)
  with pytest.raises(SystemExit) as exit_info:
    # absl's main takes the whole argv (program name first); argparse tools the arguments only
    main([name, *args] if name == "xmae-train" else args)
  out, err = capsys.readouterr()
  return exit_info.value.code or 0, out, err


def test_setup_lists_every_tool():
  assert set(SCRIPTS) == set(EXPECTED_FLAGS)


def test_setup_version_is_the_package_version():
  """One owner: setup.py reads xmae_jax.__version__ (the wheel test checks the result)."""
  keywords = {k.arg: k.value for k in _setup_call().keywords}
  assert not isinstance(keywords["version"], ast.Constant)
  assert "__version__" in (REPO / "setup.py").read_text()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_lists_flags_with_defaults(name, capsys):
  code, out, err = _call(SCRIPTS[name], ["--help"], capsys)
  assert code == 0, err
  assert name in out and "--version" in out
  for flag in EXPECTED_FLAGS[name]:
    assert flag in out, (name, flag)
  if name != "xmae-import-torch":  # its three flags are all required
    assert "(default: " in out


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version(name, capsys):
  code, out, _ = _call(SCRIPTS[name], ["--version"], capsys)
  assert code == 0
  assert out == f"xmae-jax {xmae_jax.__version__}\n"


def test_train_help_in_its_own_process():
  """absl's own --help lists nothing and exits 1: the real console path answers 0 with flags."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "xmae_jax.cli.xmae_train", "--help"],
      capture_output=True,
      text=True,
      env=env,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert "--workdir" in proc.stdout and "(default: True)" in proc.stdout


def test_defaults_shown_and_deprecated_spelling_hidden_but_accepted(capsys):
  from xmae_jax.cli import xmae_prepare

  parser = xmae_prepare.build_parser()
  text = parser.format_help()
  assert "--require-modalities {" in text and "(default: both)" in text
  assert "--workers WORKERS     (default: " in text  # a flag without help text
  assert "--modalities {" not in text  # the old spelling: named only
  assert "formerly --modalities: still accepted" in " ".join(text.split())
  args = parser.parse_args(["--modalities", "ppg"])
  assert args.modalities == "ppg"
  assert "--modalities is deprecated; use --require-modalities" in capsys.readouterr().err
  assert parser.parse_args(["--require-modalities=ecg"]).modalities == "ecg"
  assert capsys.readouterr().err == ""


def test_usage_errors_stay_one_line(capsys):
  p = common.parser("xmae-x", "xmae-x: a tool.\n\n  xmae-x --n 3\n")
  p.add_argument("--n", type=int, default=1)
  with pytest.raises(common.UsageError, match="invalid int value"):
    p.parse_args(["--n", "x"])
  assert "xmae-x --n 3" in p.format_help()  # the docstring's examples follow the flags
