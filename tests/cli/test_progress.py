"""Progress of the long tools: a tqdm bar on a terminal, plain newline-separated lines at a bounded
rate elsewhere (never carriage returns in a log file), silent for short runs."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmae_jax import progress

REPO = Path(__file__).resolve().parents[2]


class Clock:

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


class Terminal(io.StringIO):

  def isatty(self):
    return True


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
  monkeypatch.delenv(progress.ENV, raising=False)  # tests/conftest.py turns it off elsewhere


def test_a_log_file_gets_one_line_per_tenth_and_no_carriage_returns():
  out, clock = io.StringIO(), Clock()
  with progress.LineProgress(
      total=556, desc="xmae-prepare wfdb", unit="input", file=out, clock=clock
  ) as bar:
    for _ in range(556):
      clock.t += 0.5
      bar.update(1)
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  lines = text.splitlines()
  assert text.endswith("\n") and len(lines) == 10  # 10%, 20%, ..., 90%, then the final line
  assert lines[0].startswith("xmae-prepare wfdb: 56/556 input (10%), 28 s elapsed, ~4 min")
  assert lines[-1].startswith("xmae-prepare wfdb: 556/556 input (100%), 4 min 38 s elapsed")
  assert "left" not in lines[-1]


def test_unknown_totals_and_slow_steps_are_bounded_in_time():
  out, clock = io.StringIO(), Clock()
  bar = progress.LineProgress(desc="embedding", unit="window", file=out, every_s=30, clock=clock)
  for _ in range(1000):  # 1000 updates over 125 s: one line per 30 s
    clock.t += 0.125
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert [line.split(",")[0] for line in lines] == [
      "embedding: 240 window",
      "embedding: 480 window",
      "embedding: 720 window",
      "embedding: 960 window",
      "embedding: 1000 window",
  ]


def test_short_runs_print_nothing_and_long_ones_start_after_the_delay():
  out, clock = io.StringIO(), Clock()
  for _ in progress.LineProgress(range(50), desc="fast", file=out, delay_s=2.0, clock=clock):
    clock.t += 0.01
  assert out.getvalue() == ""
  clock = Clock()
  bar = progress.LineProgress(total=100, desc="slow", file=out, delay_s=2.0, clock=clock)
  for i in range(100):
    clock.t += 0.125  # visible from the 16th update (2 s)
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("slow: 16/100 it (16%), 2 s elapsed")
  assert lines[-1].startswith("slow: 100/100")
  assert len(lines) == 10  # 16% (start), 20% ... 90%, final


def test_bar_picks_tqdm_only_for_a_terminal(monkeypatch):
  from tqdm import tqdm

  log = io.StringIO()
  b = progress.bar(total=3, desc="x", file=log, delay_s=0)
  assert isinstance(b, progress.LineProgress)
  for _ in range(3):
    b.update(1)
  b.close()
  assert log.getvalue().splitlines() == [
      "x: 1/3 it (33%), 0 s elapsed, ~0 s left",
      "x: 2/3 it (67%), 0 s elapsed, ~0 s left",
      "x: 3/3 it (100%), 0 s elapsed",
  ]
  term = Terminal()
  t = progress.bar(total=3, desc="x", file=term, delay_s=0)
  assert isinstance(t, tqdm)
  t.close()
  monkeypatch.setenv(progress.ENV, "0")
  silent = io.StringIO()
  for _ in progress.bar(range(5), desc="x", file=silent, delay_s=0):
    pass
  assert silent.getvalue() == ""


def test_prepare_writes_plain_lines_into_a_log(tmp_path):
  """The real tool with stderr redirected to a file: lines, no carriage returns."""
  log = tmp_path / "prepare.log"
  # No delay, so that a two-second run shows its lines.
  code = (
      "import functools, sys; from xmae_jax import progress; "
      "progress.bar = functools.partial(progress.bar, delay_s=0); "
      "from xmae_jax.cli import xmae_prepare as p; sys.exit(p.main(sys.argv[1:]))"
  )
  env = {k: v for k, v in os.environ.items() if k != progress.ENV}
  env["PYTHONPATH"] = str(REPO)
  with open(log, "w") as f:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--source",
            "synthetic",
            "--output",
            str(tmp_path / "ds"),
            "--num-subjects",
            "4",
            "--minutes-per-subject",
            "0.5",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=f,
        env=env,
        timeout=300,
    )
  assert proc.returncode == 0, log.read_text()[-2000:]
  text = log.read_text()
  assert "\r" not in text
  lines = [line for line in text.splitlines() if line.startswith("xmae-prepare synthetic")]
  assert lines, text
  assert lines[-1].startswith("xmae-prepare synthetic: 4/4 input (100%)")
