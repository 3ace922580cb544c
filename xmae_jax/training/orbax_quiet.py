"""Orbax and TensorStore failures as one line: their tracebacks and leftovers silenced.

A checkpoint that cannot be read or written is reported once, by the caller, in one line
(`one_line`, `checkpoint.CheckpointWriteError`); what Orbax and TensorStore print on the way
(logged tracebacks from background threads, 'Exception ignored' notes of abandoned reads and
late callbacks) says the same thing hundreds of lines long, and is dropped here.
"""

from __future__ import annotations

import gc
import inspect
import logging
import sys

from xmae_jax import errors


def collect_abandoned_reads() -> None:
  """A failed Orbax read leaves the coroutines of its other reads behind; collected later, each
  would print an 'Exception ignored in <coroutine>' traceback. Collect them now, quietly."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: None if inspect.iscoroutine(u.object) else previous(u)
  try:
    gc.collect()
  finally:
    sys.unraisablehook = previous


def one_line(e: BaseException) -> str:
  """`e` as one line for the user (TensorStore's pointer to its details left out)."""
  text = str(e).strip().splitlines()
  first = text[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


class _QuietStorageErrors(logging.Filter):
  """Drops Orbax's logged tracebacks of a save the storage refused (one per background thread,
  hundreds of lines): the same error is raised to the caller, who reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    text = record.getMessage() if record.levelno >= logging.ERROR else ""
    return not (
        "orbax" in record.pathname
        and (
            (error is not None and errors.storage_reason(error))
            or errors.storage_reason(Exception(text))
        )
    )


QUIET_STORAGE_ERRORS = _QuietStorageErrors()


def quiet_late_write_callbacks() -> None:
  """After a refused save, TensorStore finishes the save's other writes and calls back into the
  asyncio loop that Orbax closed on the error; each call would print a 'RuntimeError: Event loop
  is closed' traceback (through sys.unraisablehook, without an object). Those callbacks have
  nothing left to do, so they are dropped. Installed with the first Checkpointer: the failure
  happens in Orbax's background thread, and the callbacks can come before the caller hears of
  it."""
  previous = sys.unraisablehook
  if getattr(previous, "xmae_quiet", False):
    return

  def hook(unraisable):
    if not (
        unraisable.object is None
        and isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    ):
      previous(unraisable)

  hook.xmae_quiet = True  # type: ignore[attr-defined]  # a function takes any attribute
  sys.unraisablehook = hook
