"""What every benchmark shares: the timing protocol, record metadata, output.

Timing protocol: ``warmup`` untimed calls, then ``repeats`` timed calls; the
median is the result, min and max show the spread. Each timed call must
finish its own work (block on device results) before returning.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, IO, Iterable


def cpu_count() -> int:
  """CPUs this process may run on (not the machine's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
  """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  for _ in range(warmup):
    fn()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
  return seconds


def time_alternating(fns: list[Callable[[], Any]], repeats: int, warmup: int = 1
                     ) -> list[list[float]]:
  """``time_calls`` for several functions in turn: one call of each per round.

  Drift in the machine's load then moves every function alike, so their
  ratios are the run's most trustworthy numbers.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  for _ in range(warmup):
    for fn in fns:
      fn()
  seconds: list[list[float]] = [[] for _ in fns]
  for _ in range(repeats):
    for fn, times in zip(fns, seconds):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  return seconds


def summarize(seconds: list[float], per_call: float, unit: str) -> dict[str, float]:
  """Median throughput of ``per_call`` units per call, and per-call times in ms."""
  median = statistics.median(seconds)
  return {
      f"{unit}_per_sec": per_call / median,
      "ms_per_call": 1000 * median,
      "ms_per_call_min": 1000 * min(seconds),
      "ms_per_call_max": 1000 * max(seconds),
  }


def machine() -> dict[str, Any]:
  """Platform, device and versions; imports JAX (so not for the peer's child)."""
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "jax_version": jax.__version__,
      "cpu_count": cpu_count(),
  }


def record(name: str, settings: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
  """One JSON-ready result: what ran, where, when, under which load, and how fast.

  ``load`` is os.getloadavg() when the measurement ended: other processes on
  the machine share its cores, and the numbers mean little without it.
  """
  return {
      "name": name,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **machine(),
      "load": list(os.getloadavg()),
      "settings": settings,
      **results,
  }


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def table_row(result: dict[str, Any], columns: Iterable[str]) -> str:
  """``name | key=value ...`` for the columns the result has."""
  cells = [f"{key}={_cell(result[key])}" for key in columns if result.get(key) is not None]
  label = result["name"] + (f"/{result['variant']}" if "variant" in result else "")
  return f"{label:<22} | " + "  ".join(cells)


class Output:
  """Writes result dicts as JSON lines and their table rows.

  When the JSON lines go to stdout, the table goes to stderr so that stdout
  stays parseable.
  """

  def __init__(self, path: str | None):
    # Held open for the whole run; close() ends it.
    self._file: IO[str] = (open(path, "a")  # pylint: disable=consider-using-with
                           if path else sys.stdout)
    self._table: IO[str] = sys.stdout if path else sys.stderr

  def write(self, results: list[dict[str, Any]], columns: Iterable[str]) -> None:
    columns = tuple(columns)
    for result in results:
      print(table_row(result, columns), file=self._table, flush=True)
      self._file.write(json.dumps(result, sort_keys=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not sys.stdout:
      self._file.close()
