"""Progress of the long-running tools: one helper, a tqdm bar on a terminal, plain lines elsewhere.

On a terminal (stderr a tty) `bar(...)` is a tqdm bar redrawn in place. Otherwise (a log file, a
pipe, a batch job's output) a redrawn bar would write carriage returns into the file: the log of
a 556-record prepare used to be one 60 kB line. There each update that is worth a line becomes one
newline-terminated line, at a bounded rate: when the count crosses the next `every_percent` of
the total, or `every_s` seconds after the previous line (unknown totals), plus a final line.
Both stay silent for the first `delay_s` seconds, so a short run (or a bad input that fails at
once, whose one error line should stand alone) prints no progress at all.

This module is at the bottom of the package (stdlib and tqdm only), so every layer can use it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, TextIO

# `XMAE_PROGRESS=0` silences every bar (e.g. in tests); `XMAE_PROGRESS=lines` forces plain
# lines on a terminal too.
ENV = "XMAE_PROGRESS"


def is_terminal(stream: TextIO) -> bool:
  isatty = getattr(stream, "isatty", None)
  try:
    return bool(isatty and isatty())
  except ValueError:  # a closed stream
    return False


def _duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  if seconds < 60:
    return f"{seconds} s"
  return (
      f"{seconds // 60} min {seconds % 60:02d} s"
      if seconds < 3600
      else (f"{seconds // 3600} h {seconds // 60 % 60:02d} min")
  )


class LineProgress:
  """tqdm's interface (update, set_postfix_str, close, iteration, `with`) as plain lines."""

  def __init__(
      self,
      iterable: Iterable | None = None,
      *,
      total: int | None = None,
      desc: str = "",
      unit: str = "it",
      file: TextIO | None = None,
      initial: int = 0,
      every_percent: float = 10.0,
      every_s: float = 30.0,
      delay_s: float = 0.0,
      clock=time.monotonic,
  ):
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      total = len(iterable)
    self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
    self.file = file if file is not None else sys.stderr
    self.n = self._start_n = initial
    self.every_percent, self.every_s, self.clock = every_percent, every_s, clock
    self.postfix = ""
    self._t0 = self._last_t = clock()
    self._last_percent = self._percent()
    self.delay_s = delay_s
    self._visible = delay_s <= 0
    self._closed = False

  def _percent(self) -> float | None:
    return 100.0 * self.n / self.total if self.total else None

  def line(self) -> str:
    elapsed = self.clock() - self._t0
    count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
    parts = [f"{self.desc}: {count}" if self.desc else count]
    if self.total:
      parts[0] += f" ({self._percent():.0f}%)"
    parts.append(f"{_duration(elapsed)} elapsed")
    done = self.n - self._start_n
    if self.total and 0 < done and self.n < self.total:
      parts.append(f"~{_duration(elapsed / done * (self.total - self.n))} left")
    if self.postfix:
      parts.append(self.postfix)
    return ", ".join(parts)

  def _write(self) -> None:
    self.file.write(self.line() + "\n")
    self.file.flush()
    self._last_t, self._last_percent = self.clock(), self._percent()

  def update(self, n: int = 1) -> None:
    self.n += n
    percent = self._percent()
    if percent is not None and percent >= 100:
      return  # the final line is close()'s
    if not self._visible:
      if self.clock() - self._t0 >= self.delay_s:
        self._visible = True
        self._write()
      return
    crossed = (
        percent is not None
        and self._last_percent is not None
        and percent // self.every_percent > self._last_percent // self.every_percent
    )
    if crossed or self.clock() - self._last_t >= self.every_s:
      self._write()

  def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
    del refresh
    self.postfix = text

  def set_description(self, desc: str = "", refresh: bool = True) -> None:
    del refresh
    self.desc = desc

  def write(self, text: str) -> None:
    self.file.write(text + "\n")
    self.file.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if not self._visible and self.clock() - self._t0 >= self.delay_s:
        self._visible = True
      if self._visible and self.n > self._start_n:
        self._write()

  def __iter__(self):
    try:
      for item in self.iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _Silent(LineProgress):

  def _write(self) -> None:
    pass

  def write(self, text: str) -> None:
    pass


def bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    file: TextIO | None = None,
    disable: bool = False,
    initial: int = 0,
    delay_s: float = 2.0,
    **line_options: Any,
):
  """A progress bar for `desc` (e.g. the tool's name and the stage): tqdm on a terminal,
  LineProgress otherwise (`line_options`: every_percent, every_s), silent when `disable` or
  XMAE_PROGRESS=0, and for the first `delay_s` seconds. Use it as tqdm: wrap an iterable, or
  `update(n)` and `close()`/`with`."""
  file = file if file is not None else sys.stderr
  mode = os.environ.get(ENV, "").strip().lower()
  if disable or mode in ("0", "off", "false", "no"):
    return _Silent(iterable, total=total, desc=desc, unit=unit, file=file, initial=initial)
  if is_terminal(file) and mode != "lines":
    # tqdm only for a terminal: every tool imports this module.
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=file,
        initial=initial,
        dynamic_ncols=True,
        delay=delay_s,
    )
  return LineProgress(
      iterable,
      total=total,
      desc=desc,
      unit=unit,
      file=file,
      initial=initial,
      delay_s=delay_s,
      **line_options,
  )


def message(text: str, file: TextIO | None = None) -> None:
  """A status line of a stage that has no count (e.g. `compiling`), flushed at once."""
  file = file if file is not None else sys.stderr
  file.write(text + "\n")
  file.flush()
