"""The record of a run: its resolved config (``WORKDIR/config.json``) and how it ended.

Evaluate, predict and export rebuild the network from the config; the report
reads both.
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from agejax import json_files
from agejax.config import defaults

CONFIG_FILE = "config.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def exists(workdir: str) -> bool:
  return os.path.exists(path(workdir))


def save(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  json_files.write_text(path(workdir), cfg.to_json_best_effort(indent=1))


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` trained with."""
  if not exists(workdir):
    raise FileNotFoundError(f"{path(workdir)} not found: {workdir} is not an agejax "
                            "training workdir")
  try:
    with open(path(workdir), encoding="utf-8") as f:
      return defaults.from_json(f.read())
  except (ValueError, UnicodeDecodeError, TypeError, AttributeError) as e:
    from agejax.errors import UsageError  # pylint: disable=import-outside-toplevel
    raise UsageError(f"{path(workdir)} is not a readable agejax config ({type(e).__name__}: "
                     f"{str(e)[:120]}); the run's config is damaged") from None


SUMMARY_FILE = "summary.json"


def save_summary(summary: dict, workdir: str) -> None:
  """How the run ended (why it stopped, steps, best metric, wall time): ``summary.json``."""
  json_files.write_json(os.path.join(workdir, SUMMARY_FILE), summary, default=str)


def load_summary(workdir: str) -> dict | None:
  """The run's ``summary.json``; None while it runs or if it was killed."""
  summary_path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(summary_path):
    return None
  try:
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
  except (ValueError, UnicodeDecodeError):
    summary = None
  if not isinstance(summary, dict):
    logging.warning("%s is not a readable summary; the run reads as one without it "
                    "(killed, or still running)", summary_path)
    return None
  return summary


def run_name(workdir: str) -> str:
  """A run's name in titles and reports: its workdir's last component."""
  return os.path.basename(os.path.normpath(workdir)) or workdir


def title(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """``run-name: resnet18 dex, momentum lr 0.1, batch 64``: what a run's figures are titled with."""
  return (f"{run_name(workdir)}: {cfg.model.arch} {cfg.model.head}, {cfg.optim.name} lr {cfg.optim.lr:g}, "
          f"batch {cfg.train.batch_size}")
