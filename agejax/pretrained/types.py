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
    params: flat ``{path: float32 array}``; the backbone (ImageNet
      classifiers are dropped) and, where ``head`` says so, the age head.
    batch_stats: flat ``{path: float32 array}`` of BatchNorm running statistics.
    model_overrides: ``model.*`` keys that must hold for these weights to
      compute what they computed in their framework (layer variant, conv
      biases, BatchNorm epsilon, input preprocessing).
    source: where they came from: ``keras-h5``, ``torchvision``, ``timm``,
      ``caffe``.
    head: for a network that brings its age head (DEX's Caffe nets):
      ``{"head", "min_age", "max_age"}``, its ``head/...`` tensors in
      ``params``; a run with that head and range keeps them. Empty otherwise.
    image_size: the input side the file was made for (0: any).
    margin: the face crop margin its training crops had (None: unknown).
  """
  arch: str
  params: dict[str, np.ndarray]
  batch_stats: dict[str, np.ndarray]
  model_overrides: dict[str, Any]
  source: str
  head: dict[str, Any] = dataclasses.field(default_factory=dict)
  image_size: int = 0
  margin: float | None = None
