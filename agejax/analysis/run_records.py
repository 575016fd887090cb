"""A run as the report reads it: config, how it ended, and its metric series.

Everything comes from files the trainer writes (``config.json``,
``summary.json``, ``metrics.jsonl``), so a run that crashed or is still
going can be read too. Nothing here imports TensorFlow or builds a model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from agejax.train import steps
from agejax.workdir import metric_io
from agejax.workdir import run_config

TRAIN, TRAIN_EVAL, VALIDATION = "train", "train_eval", "validation"
BLOCK_UPDATE_RATIO = f"{steps.BLOCK_UPDATE_RATIO}/"  # the step's per-block metrics
BLOCK_GRAD_NORM = f"{steps.BLOCK_GRAD_NORM}/"
LR = "lr/"


def _float(value: Any) -> float:
  """A metrics.jsonl value as a float; NaN/Inf are stored as text."""
  return float(value) if isinstance(value, (int, float, str)) else math.nan


@dataclasses.dataclass(frozen=True)
class Series:
  """One metric of one split: steps and values, in step order."""
  steps: np.ndarray
  values: np.ndarray

  def __len__(self) -> int:
    return len(self.steps)


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  summary: dict[str, Any] | None  # None: still running, or killed
  records: dict[str, list[dict[str, Any]]]  # split -> records, one per step (the last written)

  @property
  def steps_per_epoch(self) -> int:
    if self.summary and self.summary.get("steps_per_epoch"):
      return int(self.summary["steps_per_epoch"])
    n = self.config.data.num_train_examples
    return max(1, n // self.config.train.batch_size) if n else 1

  @property
  def metric(self) -> str:
    return self.config.train.best_metric

  def series(self, split: str, name: str) -> Series:
    rows = [(r["step"], _float(r[name])) for r in self.records.get(split, []) if name in r]
    steps = np.asarray([s for s, _ in rows], np.int64)
    return Series(steps, np.asarray([v for _, v in rows], np.float64))

  def names(self, split: str, prefix: str) -> list[str]:
    """The metric names of ``split`` starting with ``prefix``, in first-logged order."""
    seen: dict[str, None] = {}
    for r in self.records.get(split, []):
      for k in r:
        if k.startswith(prefix):
          seen.setdefault(k)
    return list(seen)


def load(workdir: str) -> Run:
  """Reads a training workdir; FileNotFoundError when it is not one."""
  cfg = run_config.load(workdir)
  by_step: dict[str, dict[int, dict[str, Any]]] = {}
  # A resumed run logs again the steps after its last checkpoint: the later
  # record is the one the checkpointed state continued from.
  for record in metric_io.read_metrics(workdir):
    by_step.setdefault(record["split"], {})[int(record["step"])] = record
  records = {split: [rows[s] for s in sorted(rows)] for split, rows in by_step.items()}
  return Run(run_config.run_name(workdir), workdir, cfg, run_config.load_summary(workdir), records)
