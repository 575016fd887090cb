"""Calibrated age intervals: the formula every runtime applies, and where a run keeps it.

``agejax.evaluate --calibrate_on=SPLIT`` fits a split-conformal interval
(:mod:`agejax.evaluation.conformal`) and saves it in the run as
``calibration.json``; ``agejax.export`` copies it into ``model.json`` under
``interval`` when the exported checkpoint is the one it was fitted on. The
exported graphs keep their outputs (``age``, ``spread``): the interval is
computed from them by the formula written beside the numbers, so a client
of any runtime applies it in one line:

* ``normalized`` (heads with a spread):
  ``clip(age -+ quantile * max(spread, min_spread), min_age, max_age)``
* ``absolute`` (heads without one, e.g. ``regression``):
  ``clip(age -+ quantile, min_age, max_age)``

``min_spread`` keeps a near-zero spread from collapsing the interval; the
clip keeps the bounds inside the ages the model can output (the training
labels were clipped to them as well).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from agejax import json_files

CALIBRATION_FILE = "calibration.json"
MIN_SPREAD = 0.5  # years
FORMULAS = {
    "normalized": "clip(age -+ quantile * max(spread, min_spread), min_age, max_age)",
    "absolute": "clip(age -+ quantile, min_age, max_age)",
}


def scale(spread: Any, interval: Mapping[str, Any]) -> np.ndarray:
  """What ``quantile`` multiplies: ``max(spread, min_spread)``, or 1 for ``absolute``."""
  spread = np.asarray(spread, np.float64)
  if interval["method"] == "absolute":
    return np.ones_like(spread)
  return np.maximum(spread, float(interval["min_spread"]))


def bounds(age: Any, spread: Any, interval: Mapping[str, Any], min_age: float,
           max_age: float) -> tuple[np.ndarray, np.ndarray]:
  """``(low, high)`` of each prediction, by ``interval``'s formula (module doc)."""
  age = np.asarray(age, np.float64)
  half = float(interval["quantile"]) * scale(spread, interval)
  return np.clip(age - half, min_age, max_age), np.clip(age + half, min_age, max_age)


def save(workdir: str, interval: Mapping[str, Any]) -> str:
  """Writes ``interval`` as the run's ``calibration.json``; returns the path."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  json_files.write_json(path, dict(interval))
  return path


def fitted_for(workdir: str, step: int, flip_tta: bool) -> tuple[dict[str, Any] | None, str]:
  """``(interval, note)``: the run's interval if it fits checkpoint ``step`` served so.

  An interval is the served model's only when it was fitted on that
  checkpoint's predictions with the same test-time augmentation; ``note``
  describes it, or says why there is none.
  """
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return None, (f"no calibrated interval (python -m agejax.evaluate --workdir={workdir} "
                  f"--calibrate_on=validation fits one)")
  with open(path) as f:
    interval = json.load(f)
  tta = "flip" if flip_tta else "none"
  if int(interval["step"]) != int(step) or interval["tta"] != tta:
    return None, (f"no calibrated interval: {path} was fitted on step {interval['step']} "
                  f"with tta {interval['tta']}, the model is step {step} with tta {tta} "
                  f"(rerun agejax.evaluate --calibrate_on for it)")
  return interval, f"{describe(interval)} (fitted on {interval['fitted_on']})"


def describe(interval: Mapping[str, Any]) -> str:
  """``90% interval: age -+ 1.52 x max(spread, 0.5)``."""
  level = f"{100 * interval['coverage']:g}% interval"
  if interval["method"] == "absolute":
    return f"{level}: age -+ {interval['quantile']:.3g} years"
  return (f"{level}: age -+ {interval['quantile']:.3g} x max(spread, "
          f"{interval['min_spread']:g})")
