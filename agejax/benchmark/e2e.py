"""A whole training run: ``train.train_and_evaluate`` with the real pipeline.

The config file (``configs/demo.py`` by default) trains for ``steps`` steps in
a fresh temporary workdir, logging once at the end, so the last train record
of ``metrics.jsonl`` covers every step after the compiling first one. The
trainer itself measures ``images_per_sec`` and ``data_wait_fraction`` (time
spent waiting for the next batch over the interval); evaluation and
checkpointing are outside its interval. A dataset the config names is
prepared first if it prepares itself (``synthetic_faces``), untimed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "data_wait_fraction", "seconds")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class E2ESettings:
  config: str = os.path.join(_REPO, "configs", "demo.py")
  steps: int = 100
  data_dir: str = ""  # "" keeps the config's own data.data_dir


def load_config(path: str) -> Any:
  """``get_config()`` of a config file, as ``--config=`` would load it."""
  spec = importlib.util.spec_from_file_location("agejax_benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def last_train_record(workdir: str) -> dict[str, Any]:
  """The last ``split == "train"`` object of the run's metrics.jsonl."""
  from agejax.workdir import metric_io  # pylint: disable=import-outside-toplevel
  last = None
  with open(os.path.join(workdir, metric_io.METRICS_FILE)) as f:
    for line in f:
      entry = json.loads(line)
      if entry.get("split") == "train" and "images_per_sec" in entry:
        last = entry
  if last is None:
    raise RuntimeError(f"no timed train record in {workdir}: too few steps to measure")
  return last


def run(s: E2ESettings) -> list[dict[str, Any]]:
  """Trains ``s.steps`` steps of ``s.config`` in a temporary workdir; one result."""
  from agejax.data import catalog  # pylint: disable=import-outside-toplevel
  from agejax.train import loop  # pylint: disable=import-outside-toplevel
  if s.steps < 2:
    raise ValueError("e2e needs at least 2 steps: the first one compiles and is not timed")
  cfg = load_config(s.config)
  if s.data_dir:
    cfg.data.data_dir = s.data_dir
  cfg.train.num_train_steps = s.steps
  # One log, evaluation and checkpoint, at the end: a single timed interval.
  cfg.train.log_every_steps = s.steps
  cfg.train.eval_every_steps = s.steps
  cfg.train.checkpoint_every_steps = s.steps
  workdir = tempfile.mkdtemp(prefix="agejax_bench_e2e_")
  try:
    # Building a dataset prints its report; stdout may be carrying JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
      catalog.ensure_prepared(cfg.data)
      start = time.perf_counter()
      summary = loop.train_and_evaluate(cfg, workdir)
      seconds = time.perf_counter() - start
    record = last_train_record(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  settings = {**dataclasses.asdict(s), "arch": cfg.model.arch, "width": cfg.model.width,
              "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
              "dataset": cfg.data.dataset}
  results = {
      "images_per_sec": record["images_per_sec"],
      "steps_per_sec": record["steps_per_sec"],
      "data_wait_fraction": record["data_wait_fraction"],
      "timed_steps": record["step"] - 1,  # the compiling first step is excluded
      "seconds": seconds,  # the whole call: compile, evaluation, checkpoints
      "final_loss": record["loss"],
      "stopped": summary["stopped"],
  }
  return [common.record("e2e", settings, results)]
