"""Device prefetch: the next global batches are read and placed on the devices while a step runs.

`DevicePrefetch(host_iterator, place, depth)` wraps the pipeline's Grain iterator. A
background thread takes host batches from it, places each on the mesh (`place`, the trainer's
`sharding.place_batch`) and queues up to `depth` placed batches, so the step never waits for a
read or a host-to-device copy unless the input pipeline is slower than the step (what
`flax.jax_utils.prefetch_to_device` and big_vision's prefetch do; 1-2 batches suffice, more only
hold device memory).

Checkpoints stay exact: the wrapper is itself a Grain `DatasetIterator` whose `get_state()` is
the host iterator's state right after the last batch the loop TOOK, i.e. the state of the next
batch the step will consume, not of the batches read ahead. A resumed run therefore continues
with the first batch the saved step had not consumed; the queued ones are read again. Only the
thread touches the host iterator while it runs (Grain iterators are not thread-safe);
`set_state` stops it, drops the queue and sets the host iterator, and the thread starts again
at the next `next()`. `depth=0` reads and places in the caller's thread (no thread at all).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import grain

_POLL_S = 0.05  # how often a blocked producer checks whether it should stop


class DevicePrefetch(grain.DatasetIterator):
  """`next()` gives the next batch already placed by `place`; see the module docstring."""

  def __init__(self, host_iterator, place: Callable[[Any], Any], depth: int = 2):
    # A Grain parent shares its iterator context (statistics, options) with this wrapper.
    super().__init__(host_iterator if isinstance(host_iterator, grain.DatasetIterator) else ())
    if depth < 0:
      raise ValueError(f"prefetch depth {depth} must be >= 0")
    self._host, self._place, self.depth = host_iterator, place, int(depth)
    self._state = host_iterator.get_state()
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._thread: threading.Thread | None = None

  # --- the producer ------------------------------------------------------------------------

  def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
    try:
      while not stop.is_set():
        batch = next(self._host)
        item = (self._place(batch), self._host.get_state(), None)
        self._put(out, stop, item)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
      self._put(out, stop, (None, None, e))

  @staticmethod
  def _put(out: queue.Queue, stop: threading.Event, item) -> None:
    while not stop.is_set():
      try:
        out.put(item, timeout=_POLL_S)
        return
      except queue.Full:
        continue

  def _start(self) -> None:
    self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
    self._thread = threading.Thread(
        target=self._produce, args=(self._queue, self._stop), name="device-prefetch", daemon=True
    )
    self._thread.start()

  def _halt(self) -> None:
    """Stops the producer and drops what it read ahead (it is read again when needed)."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = self._queue = self._stop = None

  # --- the iterator ------------------------------------------------------------------------

  def __next__(self):
    if self.depth == 0:
      batch = self._place(next(self._host))
      self._state = self._host.get_state()
      return batch
    if self._thread is None:
      self._start()
    batch, state, error = self._queue.get()
    if error is not None:
      self._halt()
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict:
    """The host iterator's state after the last batch taken (exact for checkpoints)."""
    return dict(self._state)

  def set_state(self, state: dict) -> None:
    self._halt()
    self._host.set_state(state)
    self._state = self._host.get_state()

  def close(self) -> None:
    self._halt()
    close = getattr(self._host, "close", None)
    if close is not None:
      close()
