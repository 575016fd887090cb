"""What every pretrained-weights reader returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class WeightImportError(ValueError):
  """A weights file cannot be mapped onto an agejax network; the message lists why."""


@dataclasses.dataclass(frozen=True)
class Imported:
  """A backbone's weights in agejax's parameter paths, and what the network needs to use them.

  Attributes:
    arch: ``model.arch`` of the network, e.g. ``resnet50``.
    params: flat ``{path: float32 array}``; the backbone only (classifiers
      are dropped: the age head is new).
    batch_stats: flat ``{path: float32 array}`` of BatchNorm running statistics.
    model_overrides: ``model.*`` keys that must hold for these weights to
      compute what they computed in their framework (layer variant, conv
      biases, BatchNorm epsilon, input preprocessing).
    source: where they came from: ``keras-h5``, ``torchvision``, ``timm``.
  """
  arch: str
  params: dict[str, np.ndarray]
  batch_stats: dict[str, np.ndarray]
  model_overrides: dict[str, Any]
  source: str
