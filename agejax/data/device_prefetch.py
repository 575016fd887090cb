"""Per-process numpy batches -> global sharded jax.Arrays, prefetched on a thread."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable

import jax
import numpy as np
import tensorflow as tf


class DeviceIterator:
  """Global jax.Arrays from per-process numpy batches, ``prefetch`` ahead.

  A background thread reads the local batches, assembles each into global
  arrays with ``jax.make_array_from_process_local_data`` (batch axis sharded
  as ``sharding`` says) and queues up to ``prefetch`` of them, so the host copy
  overlaps the device step. ``prefetch=0`` converts on demand in the caller.
  """

  def __init__(self, batches: Iterable[dict[str, np.ndarray]],
               sharding: jax.sharding.Sharding, prefetch: int,
               on_error: Callable[[Exception], Exception | None] | None = None):
    self._source = iter(batches)
    # Turns a read failure into the error a user acts on (None: raise it as is).
    self._on_error = on_error or (lambda e: None)
    self._sharding = sharding
    self._prefetch = prefetch
    self._stop = threading.Event()
    self._thread = None
    if prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(target=self._fill, daemon=True)
      self._thread.start()

  def _put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self._sharding, v)
            for k, v in batch.items()}

  def _fill(self) -> None:
    try:
      for batch in self._source:
        item = ("batch", self._put(batch))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      item = ("end", None)
    except Exception as e:  # pylint: disable=broad-except
      item = ("error", e)  # re-raised in the consumer's thread
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self) -> "DeviceIterator":
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._thread is None:
      try:
        return self._put(next(self._source))
      except StopIteration:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._raise(e)
    if self._stop.is_set():
      raise StopIteration
    kind, value = self._queue.get()
    if kind == "batch":
      return value
    self._stop.set()
    if kind == "error":
      self._raise(value)
    raise StopIteration

  def _raise(self, error: Exception) -> None:
    translated = self._on_error(error)
    if translated is None:
      raise error
    raise translated from error

  def close(self) -> None:
    """Stops the background thread (it finishes the batch it is converting)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> "DeviceIterator":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def device_batches(dataset: tf.data.Dataset | Iterable[dict[str, np.ndarray]],
                   sharding: jax.sharding.Sharding,
                   prefetch: int = 2,
                   on_error: Callable[[Exception], Exception | None] | None = None
                   ) -> DeviceIterator:
  """Iterates ``dataset``'s local batches as global, sharded jax.Arrays.

  Args:
    dataset: from :func:`create_split` (or any iterable of numpy dicts).
    sharding: e.g. ``NamedSharding(mesh, PartitionSpec("data"))``: axis 0 of
      every entry is split over the mesh's data axis; each process supplies
      the rows of its addressable devices.
    prefetch: batches converted ahead (``data.prefetch``).
    on_error: maps a read failure to the exception to raise instead.
  """
  if isinstance(dataset, tf.data.Dataset):
    dataset = dataset.as_numpy_iterator()
  return DeviceIterator(dataset, sharding, prefetch, on_error)
