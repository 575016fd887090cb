"""Where metrics go: TensorBoard (clu SummaryWriter) and metrics.jsonl.

Scalars are written with the split as the first part of their name
(``train/loss``, ``validation/mae``, ``train/lr/stage3``). TensorBoard gets
one event directory per split, ``DIR/train``, ``DIR/train_eval``,
``DIR/validation``, holding the same tags (``loss``, ``mae``), so one chart
overlays the three curves (the layout of Keras' TensorBoard callback).
``metrics.jsonl`` gets one JSON object per split and step::

  {"step": 500, "split": "train", "loss": 3.1, "mae": 6.2, "lr/stage3": 0.005}
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from absl import logging
from clu import metric_writers

METRICS_FILE = "metrics.jsonl"


def _number(value: Any) -> float | int:
  value = value.item() if hasattr(value, "item") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as text
  return value


class _Ignoring(metric_writers.MetricWriter):
  """A writer that drops every kind of summary; subclasses keep what they write."""

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_scalars(self, step, scalars) -> None:
    del step, scalars

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

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _by_split(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """``{"train/loss": v}`` -> ``{"train": {"loss": v}}``; names without a split go to "progress"."""
  out: dict[str, dict[str, Any]] = {}
  for name, value in values.items():
    split, _, metric = name.partition("/")
    if not metric:  # not "split/name": progress reports such as uptime
      split, metric = "progress", name
    out.setdefault(split, {})[metric] = value
  return out


class JsonlWriter(_Ignoring):
  """Appends ``{"step", "split", <name>: value}`` lines to a file; scalars only."""

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for split, values in _by_split(scalars).items():
      record = {"step": int(step), "split": split,
                **{k: _number(v) for k, v in values.items()}}
      self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


HPARAMS_SPLIT = "train"  # the event directory that holds the run's hyperparameters


class SplitDirectoryWriter(_Ignoring):
  """TensorBoard events of ``split/name`` go to ``root/split`` under the tag ``name``."""

  def __init__(self, root: str):
    self._root = root
    self._writers: dict[str, metric_writers.SummaryWriter] = {}

  def _writer(self, split: str) -> metric_writers.SummaryWriter:
    if split not in self._writers:
      self._writers[split] = metric_writers.SummaryWriter(os.path.join(self._root, split))
    return self._writers[split]

  def write_scalars(self, step, scalars) -> None:
    for split, values in _by_split(scalars).items():
      self._writer(split).write_scalars(step, values)

  def write_images(self, step, images) -> None:
    for split, values in _by_split(images).items():
      self._writer(split).write_images(step, values)

  def write_hparams(self, hparams) -> None:
    self._writer(HPARAMS_SPLIT).write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def create_writer(workdir: str, is_chief: bool) -> metric_writers.MetricWriter:
  """TensorBoard (a directory per split) + metrics.jsonl on the chief; nothing elsewhere."""
  if not is_chief:
    return _Ignoring()
  return metric_writers.AsyncMultiWriter([
      SplitDirectoryWriter(workdir),
      JsonlWriter(os.path.join(workdir, METRICS_FILE)),
  ])


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` in the order written.

  A line that is not a JSON object (the half-written last line a run killed
  mid-write leaves) is left out, and a warning says which.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records, bad = [], []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if isinstance(record, dict):
        records.append(record)
      else:
        bad.append(number)
  if bad:
    logging.warning("%s: line %s %s not a JSON record (a run killed while writing leaves a "
                    "half-written last line); left out", path, ", ".join(map(str, bad[:5])),
                    "is" if len(bad) == 1 else "are")
  return records
