"""Per-example loss weights by age: the imbalanced-regression remedies, as config.

``train.loss_weighting`` picks how much each training example counts in
every head's loss, from the histogram ``h`` of the training labels over
whole years (``floor(label)``, clipped to the head's ``model.min_age`` ..
``model.max_age``):

============== =============================================================
``none``       every example 1 (the default)
``inverse``    ``1 / h[age]``
``sqrt_inverse`` ``1 / sqrt(h[age])``
``lds``        label distribution smoothing (Yang et al., "Delving into Deep
               Imbalanced Regression", ICML 2021): ``1 / h~[age]`` with
               ``h~ = h`` convolved with a Gaussian of ``train.lds_sigma``
               years, so a rare age next to common ones is not over-weighted
============== =============================================================

Whatever the scheme, the weights are scaled to mean 1 over the training set,
so the loss keeps its size and the learning rate its meaning. Ages absent
from the training set get the weight of the scheme's formula where it is
finite (``lds``) and 0 otherwise (``inverse`` / ``sqrt_inverse``: they never
occur in training anyway). ``data.balance_ages`` resamples instead; the two
can be combined.

The weights are one table per whole year, a constant of the compiled step
(:class:`AgeWeights` is hashable), looked up by each example's label.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from agejax.config import config_check

SCHEMES = ("none", "inverse", "sqrt_inverse", "lds")

RULES: dict[str, config_check.Rule] = {
    "train.loss_weighting": config_check.one_of(SCHEMES),
    "train.lds_sigma": config_check.POSITIVE,
}


def check(cfg: ml_collections.ConfigDict) -> None:
  """The rules of the loss weighting."""
  config_check.check_rules(cfg, RULES)


@dataclasses.dataclass(frozen=True)
class AgeWeights:
  """The weight of a training example of each whole year ``min_age + i``."""
  scheme: str
  sigma: float
  min_age: int
  table: tuple[float, ...]
  present: tuple[bool, ...]  # whether the training set has that year

  def of(self, ages: Any) -> jnp.ndarray:
    """The weights of ``ages`` (float labels; any shape), in the step."""
    index = jnp.clip(jnp.floor(ages).astype(jnp.int32) - self.min_age, 0, len(self.table) - 1)
    return jnp.asarray(self.table, jnp.float32)[index]

  def describe(self) -> str:
    """The plan's row: the scheme and the range of the weights the training set meets."""
    years = np.flatnonzero(self.present)
    used = np.asarray(self.table)[years]
    low, high = int(np.argmin(used)), int(np.argmax(used))
    smoothing = f", sigma {self.sigma:g} years" if self.scheme == "lds" else ""
    return (f"{self.scheme}{smoothing}: per-example weights {used[low]:.3g} (age "
            f"{self.min_age + years[low]}) .. {used[high]:.3g} (age "
            f"{self.min_age + years[high]}), mean 1 over the training set")


def year_bins(ages: Any, min_age: int, max_age: int) -> np.ndarray:
  """Whole-year bin of each label: ``floor(age)`` clipped to the head's range, minus min_age."""
  years = np.floor(np.asarray(ages, np.float64)).astype(np.int64)
  return np.clip(years, min_age, max_age) - min_age


def age_weights(ages: Any, scheme: str, sigma: float, min_age: int,
                max_age: int) -> AgeWeights | None:
  """The table of ``scheme`` for training labels ``ages`` (module doc); None for ``none``."""
  if scheme == "none":
    return None
  bins = year_bins(ages, min_age, max_age)
  if not bins.size:
    raise ValueError("no training labels to weight")
  counts = np.bincount(bins, minlength=max_age - min_age + 1).astype(np.float64)
  present = counts > 0
  with np.errstate(divide="ignore"):
    if scheme == "inverse":
      raw = np.where(present, 1.0 / counts, 0.0)
    elif scheme == "sqrt_inverse":
      raw = np.where(present, 1.0 / np.sqrt(counts), 0.0)
    elif scheme == "lds":
      years = np.arange(counts.size, dtype=np.float64)
      kernel = np.exp(-0.5 * np.square((years[:, None] - years[None, :]) / sigma))
      raw = 1.0 / (kernel @ counts)
    else:
      raise ValueError(f"unknown loss weighting {scheme!r}; expected one of {SCHEMES}")
  # Scale so that the mean weight over the training examples is exactly 1.
  raw = raw / (np.sum(counts * raw) / counts.sum())
  return AgeWeights(scheme, float(sigma), int(min_age), tuple(float(w) for w in raw),
                    tuple(bool(p) for p in present))


def for_run(cfg: ml_collections.ConfigDict) -> AgeWeights | None:
  """The run's table from its training split's labels (read once; no images decoded)."""
  if cfg.train.loss_weighting == "none":
    return None
  from agejax.data import input_pipeline  # pylint: disable=import-outside-toplevel

  ages = input_pipeline.split_labels(cfg.data, cfg.data.train_split)
  return age_weights(ages, cfg.train.loss_weighting, cfg.train.lds_sigma,
                     cfg.model.min_age, cfg.model.max_age)
