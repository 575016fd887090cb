"""Where metrics go: TensorBoard (clu SummaryWriter), the log, and metrics.jsonl.

Scalars are written with the split as the first part of their name
(``train/loss``, ``validation/mae``, ``train/lr/stage3``): TensorBoard groups
them by split, and ``metrics.jsonl`` gets one JSON object per split and step::

  {"step": 500, "split": "train", "loss": 3.1, "mae": 6.2, "lr/stage3": 0.005}
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from clu import metric_writers

METRICS_FILE = "metrics.jsonl"


def _number(value: Any) -> float | int:
  value = value.item() if hasattr(value, "item") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as text
  return value


class JsonlWriter(metric_writers.MetricWriter):
  """Appends ``{"step", "split", <name>: value}`` lines to a file; scalars only."""

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    by_split: dict[str, dict[str, Any]] = {}
    for name, value in scalars.items():
      split, _, metric = name.partition("/")
      if not metric:  # not "split/name": progress reports such as uptime
        split, metric = "progress", name
      by_split.setdefault(split, {})[metric] = _number(value)
    for split, values in by_split.items():
      self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    self._file.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # TensorBoard's hparams plugin has them; the jsonl holds metrics only

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_images(self, step, images) -> None:
    del step, images

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def create_writer(workdir: str, is_chief: bool) -> metric_writers.MetricWriter:
  """TensorBoard + log + metrics.jsonl on the chief process, the log elsewhere."""
  if not is_chief:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.AsyncMultiWriter([
      metric_writers.LoggingWriter(),
      metric_writers.SummaryWriter(workdir),
      JsonlWriter(os.path.join(workdir, METRICS_FILE)),
  ])


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` in the order written."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
