"""The resolved config a run trained with: ``WORKDIR/config.json``.

Evaluate, predict and export rebuild the network from it.
"""

from __future__ import annotations

import os

import ml_collections

from agejax.config import defaults

CONFIG_FILE = "config.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def exists(workdir: str) -> bool:
  return os.path.exists(path(workdir))


def save(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(path(workdir), "w") as f:
    f.write(cfg.to_json_best_effort(indent=1))


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` trained with."""
  if not exists(workdir):
    raise FileNotFoundError(f"{path(workdir)} not found: {workdir} is not an agejax "
                            "training workdir")
  with open(path(workdir)) as f:
    return defaults.from_json(f.read())
